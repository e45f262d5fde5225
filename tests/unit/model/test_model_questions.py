"""Questions about one image: answered in a batch (the image encoded once) they equal the same
question asked alone through transformers' own ``generate`` (greedy, float32); a later turn of a
conversation is answered with the earlier turns in its context."""

from __future__ import annotations

import pytest
from PIL import Image

from model.engine import GenerationRequest, Turn
from model.transformers_engine import TransformersEngine
from tests.unit.model.through_transformers import count_encoded_images, drawn_image, reference_text

QUESTIONS = ["what brand is it?", "is there text on the pack?", "what colour is it?", "why"]


def test_questions_in_a_batch_equal_each_asked_alone_through_transformers(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, label = drawn_image(1, (120, 90)), drawn_image(2, (64, 200))
    requests = [GenerationRequest(photo, q) for q in QUESTIONS] + [
        GenerationRequest(label, q) for q in QUESTIONS[:2]
    ]
    encoded = count_encoded_images(tiny_engine, monkeypatch)
    batched = tiny_engine.generate(requests, max_new_tokens=10)
    assert encoded == [2]  # two distinct images, six questions: each image encoded once
    monkeypatch.undo()  # transformers' own generate inspects the real method's signature
    expected = [
        reference_text(tiny_engine, r.image, [Turn("user", r.prompt)], 10) for r in requests
    ]
    assert [r.text for r in batched] == expected
    assert len(set(expected)) > 1  # the comparison means something only if answers differ


def test_a_later_turn_is_answered_in_the_context_of_the_earlier_ones(
    tiny_engine: TransformersEngine,
) -> None:
    photo = drawn_image(3, (80, 80))
    (first,) = tiny_engine.generate([GenerationRequest(photo, QUESTIONS[0])], max_new_tokens=8)
    turns = [Turn("user", QUESTIONS[0]), Turn("assistant", first.text), Turn("user", QUESTIONS[1])]
    (second,) = tiny_engine.generate([GenerationRequest(photo, turns)], max_new_tokens=8)
    assert second.text == reference_text(tiny_engine, photo, turns, 8)
    # The earlier turns are really in the prompt, not dropped.
    assert tiny_engine.count_prompt_tokens(turns) > tiny_engine.count_prompt_tokens(QUESTIONS[1])


def test_a_conversation_must_end_with_a_user_turn() -> None:
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="end with a user turn"):
        GenerationRequest(image, [Turn("user", "a"), Turn("assistant", "b")])
    with pytest.raises(ValueError, match="alternate"):
        GenerationRequest(image, [Turn("user", "a"), Turn("user", "b")])
