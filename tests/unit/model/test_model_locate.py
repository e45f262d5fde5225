"""Parity for ``locate``: expressions located in one batch (several per image, the image encoded
once) give the same boxes as each prompt through transformers' own ``generate`` on its image
alone, greedy, in float32, under the same constraint (the box pattern, through llguidance's
logits processor); and every answer, even from random weights, parses as a box."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from PIL import Image

from jobs.kinds.locate import TEMPLATES, parse_box
from model.constrained import JsonLogitsProcessor, compile_pattern
from model.engine import GenerationRequest
from model.geometry import frame_of, preprocessing_of
from model.transformers_engine import TransformersEngine

TEMPLATE = TEMPLATES["llava"]
EXPRESSIONS = ["the red bus", "the logo", "the man in a white shirt", "the left bottle"]


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (40 * seed % 256, 200 - 30 * seed, 90))
    for x in range(min(size[0], 24)):
        image.putpixel((x, seed % size[1]), (x * 10, 255 - x * 10, 7 * seed))
    return image


def _reference(engine: TransformersEngine, image: Image.Image, prompt: str, n: int) -> str:
    """transformers alone: the chat template, the processor and ``generate``, constrained by
    the same pattern, with the engine's settings (greedy; the image token never generated)."""
    processor: Any = engine._processor
    model: Any = engine._model
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    grammar = compile_pattern(TEMPLATE.pattern, engine._llg_tokenizer())
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=n,
            do_sample=False,
            num_beams=1,
            suppress_tokens=[engine._image_token_id],
            logits_processor=[JsonLogitsProcessor([grammar])],
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return str(processor.tokenizer.decode(new, skip_special_tokens=True)).strip()


def _count_encoded_images(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    base: Any = engine._model.base_model
    original = base.get_image_features

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(int(kwargs["pixel_values"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "get_image_features", counting)
    return seen


def test_boxes_located_in_a_batch_equal_each_located_alone_through_transformers(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, label = _image(1, (120, 90)), _image(2, (64, 200))
    requests = [GenerationRequest(photo, TEMPLATE.ask(e)) for e in EXPRESSIONS] + [
        GenerationRequest(label, TEMPLATE.ask(e)) for e in EXPRESSIONS[:2]
    ]
    budget = TEMPLATE.max_chars + 1
    encoded = _count_encoded_images(tiny_engine, monkeypatch)
    batched = tiny_engine.generate(requests, max_new_tokens=budget, pattern=TEMPLATE.pattern)
    assert encoded == [2]  # two images, six expressions: each image encoded once
    monkeypatch.undo()  # transformers' own generate inspects the real method's signature
    expected = [_reference(tiny_engine, r.image, r.prompt, budget) for r in requests]  # type: ignore[arg-type]
    assert [r.text for r in batched] == expected
    # Random weights answer much the same box for every input; the constraint is what makes
    # it a box at all: unconstrained, the same request is not one.
    (free,) = tiny_engine.generate(requests[:1], max_new_tokens=budget)
    assert not re.fullmatch(TEMPLATE.pattern, free.text), free.text
    for result, request in zip(batched, requests, strict=True):
        assert result.finished
        box, _ = parse_box(result.text, TEMPLATE)  # every answer parses
        assert all(0 <= v <= 1 for v in box)
        # The frame the engine reports is the one its processor puts this image in.
        prep = preprocessing_of(tiny_engine._processor.image_processor)
        assert prep is not None and request.image is not None
        assert result.frame == frame_of(prep, request.image.size)
