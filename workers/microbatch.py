"""The worker's GPU micro-batch: how many generations go to the model at once.

It belongs to the worker, which knows its device, not to a job (a job's ``--batch-size`` is how
many items travel in one message). It starts at ``LLAVA_BATCH_GPU_BATCH_SIZE``, or the engine's
own suggestion for its device when that is 0; when a batch runs out of device memory the size
is halved and remembered, so the next batches do not find the limit again one OOM at a time.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

DEFAULT_SIZE = 8


class MicroBatch:
    def __init__(self, size: int = 0) -> None:
        self._size = size  # 0: ask the engine on first use
        self._lock = threading.Lock()

    def size_for(self, engine: object) -> int:
        with self._lock:
            if self._size < 1:
                suggested = getattr(engine, "suggested_batch_size", DEFAULT_SIZE)
                self._size = int(suggested) if isinstance(suggested, int) else DEFAULT_SIZE
            return self._size

    def out_of_memory_at(self, size: int) -> None:
        """A batch of ``size`` did not fit: never try more than half of it again."""
        with self._lock:
            limit = max(1, size // 2)
            if limit < self._size:
                log.warning(
                    "out of device memory at a batch of %d: micro-batch %d -> %d",
                    size,
                    self._size,
                    limit,
                )
                self._size = limit
