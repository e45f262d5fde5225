"""What the parity tests compare the engine with: transformers alone on one image, and a count of
the images the model encodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from PIL import Image

from model.engine import Turn
from model.transformers_engine import TransformersEngine


def drawn_image(seed: int, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (40 * seed % 256, 200 - 30 * seed, 90))
    for x in range(min(size[0], 24)):
        image.putpixel((x, seed % size[1]), (x * 10, 255 - x * 10, 7 * seed))
    return image


def reference_text(
    engine: TransformersEngine,
    image: Image.Image,
    turns: Sequence[Turn],
    n: int,
    logits_processor: Sequence[Any] = (),
) -> str:
    """transformers alone: the chat template, the processor and ``generate``, with the engine's
    generation settings (greedy; the image token never generated) and ``logits_processor``
    (a constraint the engine applied too)."""
    processor: Any = engine._processor
    model: Any = engine._model
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        content: list[dict[str, Any]] = [{"type": "image"}] if i == 0 else []
        content.append({"type": "text", "text": turn.text})
        messages.append({"role": turn.role, "content": content})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=n,
            do_sample=False,
            num_beams=1,
            suppress_tokens=[engine._image_token_id],
            logits_processor=list(logits_processor),
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return str(processor.tokenizer.decode(new, skip_special_tokens=True)).strip()


def count_encoded_images(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images in each call of the model's image encoder, from now on."""
    seen: list[int] = []
    base: Any = engine._model.base_model
    original = base.get_image_features

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(int(kwargs["pixel_values"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "get_image_features", counting)
    return seen
