"""Parity for ``locate``: expressions located in one batch (several per image, the image encoded
once) give the same boxes as each prompt through transformers' own ``generate`` on its image
alone, greedy, in float32, under the same constraint (the box pattern, through llguidance's
logits processor); and every answer, even from random weights, parses as a box."""

from __future__ import annotations

import re

import pytest

from jobs.kinds.locate import TEMPLATES, parse_box
from model.constrained import JsonLogitsProcessor, compile_pattern
from model.engine import GenerationRequest, Turn
from model.geometry import frame_of, preprocessing_of
from model.transformers_engine import TransformersEngine
from tests.unit.model.through_transformers import count_encoded_images, drawn_image, reference_text

TEMPLATE = TEMPLATES["llava"]
EXPRESSIONS = ["the red bus", "the logo", "the man in a white shirt", "the left bottle"]


def test_boxes_located_in_a_batch_equal_each_located_alone_through_transformers(
    tiny_engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, label = drawn_image(1, (120, 90)), drawn_image(2, (64, 200))
    requests = [GenerationRequest(photo, TEMPLATE.ask(e)) for e in EXPRESSIONS] + [
        GenerationRequest(label, TEMPLATE.ask(e)) for e in EXPRESSIONS[:2]
    ]
    budget = TEMPLATE.max_chars + 1
    encoded = count_encoded_images(tiny_engine, monkeypatch)
    batched = tiny_engine.generate(requests, max_new_tokens=budget, pattern=TEMPLATE.pattern)
    assert encoded == [2]  # two images, six expressions: each image encoded once
    monkeypatch.undo()  # transformers' own generate inspects the real method's signature
    # The same constraint as the engine's, through llguidance's logits processor.
    grammar = compile_pattern(TEMPLATE.pattern, tiny_engine._llg_tokenizer())
    expected = [
        reference_text(
            tiny_engine,
            r.image,  # type: ignore[arg-type]
            [Turn("user", r.prompt)],
            budget,
            [JsonLogitsProcessor([grammar])],
        )
        for r in requests
    ]
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
