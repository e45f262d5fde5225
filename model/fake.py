"""A deterministic engine without torch, for fast tests of everything around the model.

Each result's text is ``f"caption of {width}x{height} image: {prompt}"`` (the request's image size
and the prompt), split on whitespace, cut to ``max_new_tokens`` words and re-joined with single
spaces; ``tokens_out`` is its number of words. So a test can tell which image and prompt
produced which result, and that results come back in request order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from model.engine import GenerationRequest, GenerationResult
from model.errors import DeviceOutOfMemoryError

__all__ = ["FakeEngine"]


class FakeEngine:
    """Implements ``model.engine.Engine``.

    ``delay_s`` sleeps once per ``generate`` call (to test timeouts and leases).
    ``oom_when_batch_over``: batches larger than this raise ``DeviceOutOfMemoryError``, as a GPU
    would, so callers' batch splitting can be tested. ``calls`` records every batch size seen,
    including the ones that raised.
    """

    def __init__(
        self,
        name: str = "fake",
        delay_s: float = 0.0,
        *,
        oom_when_batch_over: int | None = None,
    ) -> None:
        self._name = name
        self.delay_s = delay_s
        self.oom_when_batch_over = oom_when_batch_over
        self.calls: list[int] = []
        # Workers may share one engine across threads; keep the record consistent.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def generate(
        self, requests: Sequence[GenerationRequest], *, max_new_tokens: int
    ) -> list[GenerationResult]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        with self._lock:
            self.calls.append(len(requests))
        if self.oom_when_batch_over is not None and len(requests) > self.oom_when_batch_over:
            raise DeviceOutOfMemoryError(
                f"fake engine: batch of {len(requests)} is over {self.oom_when_batch_over}"
            )
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return [self._caption(request, max_new_tokens) for request in requests]

    @staticmethod
    def _caption(request: GenerationRequest, max_new_tokens: int) -> GenerationResult:
        width, height = request.image.size
        words = f"caption of {width}x{height} image: {request.prompt}".split()[:max_new_tokens]
        return GenerationResult(text=" ".join(words), tokens_out=len(words))
