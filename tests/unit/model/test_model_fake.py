from __future__ import annotations

import pytest
from PIL import Image

from model.engine import Engine, GenerationRequest, GenerationResult
from model.errors import DeviceOutOfMemoryError
from model.fake import FakeEngine


def _request(width: int, height: int, prompt: str) -> GenerationRequest:
    return GenerationRequest(Image.new("RGB", (width, height)), prompt)


def test_results_are_deterministic_in_order_and_count_words() -> None:
    engine: Engine = FakeEngine()
    results = engine.generate(
        [_request(3, 4, "what is this"), _request(10, 2, "describe")], max_new_tokens=50
    )
    assert results == [
        GenerationResult(text="caption of 3x4 image: what is this", tokens_out=7, tokens_in=4),
        GenerationResult(text="caption of 10x2 image: describe", tokens_out=5, tokens_in=2),
    ]
    assert engine.name == "fake"


def test_text_is_cut_to_max_new_tokens() -> None:
    [result] = FakeEngine().generate([_request(1, 1, "a b c d e f")], max_new_tokens=3)
    assert result == GenerationResult(
        text="caption of 1x1", tokens_out=3, finished=False, tokens_in=7
    )


def test_records_batch_sizes_and_raises_oom_over_the_limit() -> None:
    engine = FakeEngine(name="m", oom_when_batch_over=2)
    assert len(engine.generate([_request(1, 1, "x")] * 2, max_new_tokens=5)) == 2
    with pytest.raises(DeviceOutOfMemoryError):
        engine.generate([_request(1, 1, "x")] * 3, max_new_tokens=5)
    assert engine.generate([], max_new_tokens=5) == []
    assert engine.calls == [2, 3, 0]
    assert engine.name == "m"


def test_rejects_non_positive_max_new_tokens() -> None:
    with pytest.raises(ValueError):
        FakeEngine().generate([_request(1, 1, "x")], max_new_tokens=0)
