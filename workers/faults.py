"""Fault injection for the fault suite (tests/integration/faults), off unless asked for.

``LLAVA_BATCH_TEST_FAULTS`` holds JSON; the worker then wraps its real engine so a test can make
a batch slow (to kill the worker mid-batch), make a marked item kill its worker the way the OOM
killer would, or make the device run out of memory on large batches. Nothing else changes: the
model, the pipeline, the database and the broker are the real ones.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.engine import DelegatingEngine, Engine, GenerationRequest, GenerationResult
from model.errors import DeviceOutOfMemoryError

log = logging.getLogger(__name__)

FAULTS_VARIABLE = "LLAVA_BATCH_TEST_FAULTS"


@dataclass(frozen=True)
class Faults:
    generate_delay_s: float = 0.0
    kill_on_prompt: str | None = None  # SIGKILL this process when a prompt contains it
    oom_over_batch: int | None = None  # raise a device OOM for batches larger than this


def read_faults(environ: dict[str, str] | None = None) -> Faults | None:
    raw = (environ if environ is not None else os.environ).get(FAULTS_VARIABLE)
    return Faults(**json.loads(raw)) if raw else None


class FaultyEngine(DelegatingEngine):
    """The real engine, with the faults of ``Faults`` injected before each ``generate``."""

    def __init__(self, engine: Engine, faults: Faults) -> None:
        super().__init__(engine)
        self.faults = faults
        log.warning("fault injection is ON: %s", faults)

    def generate(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[GenerationResult]:
        marker = self.faults.kill_on_prompt
        if marker and any(marker in r.prompt for r in requests):
            log.warning("fault: killing this worker (batch of %d)", len(requests))
            os.kill(os.getpid(), signal.SIGKILL)
        if self.faults.oom_over_batch is not None and len(requests) > self.faults.oom_over_batch:
            raise DeviceOutOfMemoryError(f"fault: batch of {len(requests)} does not fit")
        if self.faults.generate_delay_s:
            time.sleep(self.faults.generate_delay_s)
        return super().generate(requests, **options)
