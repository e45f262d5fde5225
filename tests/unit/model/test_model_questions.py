"""Questions about one image: answered in a batch (the image encoded once) they equal the same
question asked alone through transformers' own ``generate`` (greedy, float32); a later turn of a
conversation is answered with the earlier turns in its context."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from model.engine import GenerationRequest, Turn
from model.transformers_engine import TransformersEngine

QUESTIONS = ["what brand is it?", "is there text on the pack?", "what colour is it?", "why"]


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (40 * seed % 256, 200 - 30 * seed, 90))
    for x in range(min(size[0], 24)):
        image.putpixel((x, seed % size[1]), (x * 10, 255 - x * 10, 7 * seed))
    return image


def _reference(engine: TransformersEngine, image: Image.Image, turns: list[Turn], n: int) -> str:
    """transformers alone: the chat template, the processor and ``generate``, with the engine's
    generation settings (greedy; the image token never generated)."""
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


def test_questions_in_a_batch_equal_each_asked_alone_through_transformers(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, label = _image(1, (120, 90)), _image(2, (64, 200))
    requests = [GenerationRequest(photo, q) for q in QUESTIONS] + [
        GenerationRequest(label, q) for q in QUESTIONS[:2]
    ]
    encoded = _count_encoded_images(tiny_engine, monkeypatch)
    batched = tiny_engine.generate(requests, max_new_tokens=10)
    assert encoded == [2]  # two distinct images, six questions: each image encoded once
    monkeypatch.undo()  # transformers' own generate inspects the real method's signature
    expected = [_reference(tiny_engine, r.image, [Turn("user", r.prompt)], 10) for r in requests]
    assert [r.text for r in batched] == expected
    assert len(set(expected)) > 1  # the comparison means something only if answers differ


def test_a_later_turn_is_answered_in_the_context_of_the_earlier_ones(
    tiny_engine: TransformersEngine,
) -> None:
    photo = _image(3, (80, 80))
    (first,) = tiny_engine.generate([GenerationRequest(photo, QUESTIONS[0])], max_new_tokens=8)
    turns = [Turn("user", QUESTIONS[0]), Turn("assistant", first.text), Turn("user", QUESTIONS[1])]
    (second,) = tiny_engine.generate([GenerationRequest(photo, turns)], max_new_tokens=8)
    assert second.text == _reference(tiny_engine, photo, turns, 8)
    # The earlier turns are really in the prompt, not dropped.
    assert tiny_engine.count_prompt_tokens(turns) > tiny_engine.count_prompt_tokens(QUESTIONS[1])


def test_a_conversation_must_end_with_a_user_turn() -> None:
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="end with a user turn"):
        GenerationRequest(image, [Turn("user", "a"), Turn("assistant", "b")])
    with pytest.raises(ValueError, match="alternate"):
        GenerationRequest(image, [Turn("user", "a"), Turn("user", "b")])
