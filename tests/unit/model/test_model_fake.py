from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from PIL import Image

from model.engine import DelegatingEngine, Engine, GenerationRequest, GenerationResult
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


def test_a_delegating_engine_forwards_the_interface_and_its_options() -> None:
    seen: list[dict[str, Any]] = []

    class Recording(DelegatingEngine):  # overrides only what it changes
        def generate(
            self, requests: Sequence[GenerationRequest], **options: Any
        ) -> list[GenerationResult]:
            seen.append(options)
            return super().generate(requests, **options)

    inner = FakeEngine("inner", oom_when_batch_over=1)
    engine: Engine = Recording(inner)
    assert (engine.name, engine.revision) == ("inner", None)
    [result] = engine.generate([_request(1, 1, "a b c")], max_new_tokens=2, fit_to_context=True)
    assert result == inner.generate([_request(1, 1, "a b c")], max_new_tokens=2)[0]
    assert seen == [{"max_new_tokens": 2, "fit_to_context": True}]
    with pytest.raises(DeviceOutOfMemoryError):  # the wrapped engine's errors come through
        engine.generate([_request(1, 1, "a"), _request(1, 1, "b")], max_new_tokens=1)
    assert not hasattr(engine, "oom_when_batch_over")  # nothing else is forwarded
