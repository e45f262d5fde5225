"""Batching must not change results: greedy float32 output of a mixed batch equals each item alone.

Left padding, attention masks and per-image token counts (LLaVA-NeXT's depend on aspect ratio)
are where batching bugs hide, so the batch mixes image sizes, shapes and prompt lengths.
"""

from __future__ import annotations

import pytest
from PIL import Image

from model.engine import GenerationRequest
from model.transformers_engine import TransformersEngine

SIZES = [(1, 1), (28, 28), (200, 30), (30, 200), (97, 61), (640, 480), (5, 300), (56, 56), (13, 7)]
PROMPTS = [
    "describe",
    "describe the image in detail",
    "what is the total amount on this invoice? answer with a number only please",
    "list every colour",
    "caption",
    "what " * 30,
    "is there a cat or a dog in this photo, and what is it doing?",
    "json",
    "where",
]


def _mixed_requests() -> list[GenerationRequest]:
    requests = []
    for i, (size, prompt) in enumerate(zip(SIZES, PROMPTS, strict=True)):
        image = Image.new("RGB", size, (37 * i % 256, 90 + 11 * i, 250 - 23 * i))
        # A gradient so images differ in content, not only in colour.
        for x in range(min(size[0], 20)):
            image.putpixel((x, 0), (x * 12, 255 - x * 12, 0))
        requests.append(GenerationRequest(image, prompt))
    return requests


@pytest.mark.parametrize("max_new_tokens", [12])
def test_batched_equals_solo(tiny_engine: TransformersEngine, max_new_tokens: int) -> None:
    requests = _mixed_requests()
    assert len(requests) >= 8
    batched = tiny_engine.generate(requests, max_new_tokens=max_new_tokens)
    solo = [tiny_engine.generate([r], max_new_tokens=max_new_tokens)[0] for r in requests]
    assert batched == solo
    # The comparison means something only if outputs depend on the input.
    assert len({result.text for result in solo}) > 1


def test_order_follows_the_requests(tiny_engine: TransformersEngine) -> None:
    requests = _mixed_requests()
    forward = tiny_engine.generate(requests, max_new_tokens=8)
    backward = tiny_engine.generate(requests[::-1], max_new_tokens=8)
    assert backward == forward[::-1]
