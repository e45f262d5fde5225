"""Per-process resources, built once and handed in: session factory, blob access, the model.

The model is loaded lazily on first use (or by the worker_ready warm-up), never per task and
never in ``worker_process_init``, which must return within seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.context import open_database
from jobs.db import SessionFactory, make_session_factory
from jobs.fleet import Serving
from jobs.settings import Settings
from model.engine import Engine, EngineSpec
from storage import Blobs, open_blobs
from workers import metrics
from workers.helpers import decode_threads_per_slot
from workers.isolation import Isolation
from workers.malloc import cap_arenas
from workers.microbatch import MicroBatch

log = logging.getLogger(__name__)


@dataclass
class WorkerResources:
    session_factory: SessionFactory
    blobs: Blobs
    engine_loader: Callable[[], Engine]
    batch_size: int
    max_new_tokens: int
    lease_seconds: int
    max_attempts: int
    max_image_pixels: int
    max_pdf_pages: int = 50
    # The GPU micro-batch (the worker's; 0: the engine's suggestion for its device) and the
    # size of the messages this process publishes itself (the embedded runner's sweeps).
    gpu_batch_size: int = 0
    message_size: int = 8
    # Messages worked on at once, sharing the model (LLAVA_BATCH_WORKER_SLOTS): the Celery
    # pool's threads, or the embedded runner's. The budgets below are split between them.
    slots: int = 1
    # Decode threads of each slot (LLAVA_BATCH_DECODE_THREADS split between the slots).
    decode_threads: int = 1
    # Budgets of the decode path (see jobs.settings): bytes read per input, pixels per item
    # (a document's selected pages together), decoded pixels held ahead of the model.
    max_input_bytes: int = 256 * 2**20
    max_item_pixels: int = 200_000_000
    max_batch_pixels: int = 200_000_000
    storage_retry_base_seconds: float = 5
    storage_retry_max_seconds: float = 300
    storage_retry_limit: int = 12
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # The model this worker serves as jobs name it (LLAVA_BATCH_MODEL) and its quantisation;
    # None (tests with a fake engine): claim any job's items, record no model.
    model: str | None = None
    quantization: str = "none"
    micro_batch: MicroBatch = field(init=False)
    isolation: Isolation = field(default_factory=Isolation)
    _engine: Engine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.micro_batch = MicroBatch(self.gpu_batch_size or self.batch_size)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    started = time.monotonic()
                    engine = self.engine_loader()
                    metrics.record_model_load(time.monotonic() - started)
                    _share_cores(engine)
                    self._engine = engine
        return self._engine

    @property
    def serving(self) -> Serving | None:
        """What this worker serves; loads the engine (its revision is known once loaded)."""
        if self.model is None:
            return None
        return Serving(self.model, self.engine.revision, self.quantization)


def _share_cores(engine: Engine) -> None:
    """A model on the CPU runs torch on one intra-op thread: the worker's slots and decode
    threads are its parallelism (``TransformersEngine.limit_cpu_threads`` says why)."""
    limit = getattr(engine, "limit_cpu_threads", None)
    if callable(limit) and limit(1):
        log.info("model on the CPU: torch uses one intra-op thread beside the worker's threads")


def build_engine_spec(settings: Settings) -> EngineSpec:
    return EngineSpec(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        quantization=settings.quantization,
        cache_dir=settings.model_cache_dir,
    )


def load_transformers_engine(spec: EngineSpec) -> Engine:
    import transformers

    from model.transformers_engine import load_engine  # torch is imported here, and only here

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    log.info(
        "loading model %s (dtype=%s, device=%s, quantization=%s)",
        spec.model,
        spec.dtype,
        spec.device,
        spec.quantization,
    )
    return load_engine(spec)


def _with_faults(engine: Engine) -> Engine:
    from workers.faults import FaultyEngine, read_faults

    faults = read_faults()
    return engine if faults is None else FaultyEngine(engine, faults)


def build_resources(
    settings: Settings, *, engine_loader: Callable[[], Engine] | None = None
) -> WorkerResources:
    cap_arenas()  # before the worker's threads start (workers/malloc.py says why)
    spec = build_engine_spec(settings)
    return WorkerResources(
        session_factory=make_session_factory(open_database(settings)),
        blobs=open_blobs(settings.resolved_storage_url),
        engine_loader=engine_loader or (lambda: _with_faults(load_transformers_engine(spec))),
        batch_size=settings.gpu_batch_size,
        gpu_batch_size=settings.gpu_batch_size,
        message_size=settings.message_size,
        slots=settings.worker_slots,
        decode_threads=decode_threads_per_slot(settings.decode_threads, settings.worker_slots),
        max_new_tokens=settings.max_new_tokens,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        max_image_pixels=settings.max_image_pixels,
        max_pdf_pages=settings.max_pdf_pages,
        max_input_bytes=settings.max_input_bytes,
        model=settings.model,
        quantization=settings.quantization,
        max_item_pixels=settings.max_item_pixels,
        max_batch_pixels=settings.max_batch_pixels,
        storage_retry_base_seconds=settings.storage_retry_base_seconds,
        storage_retry_max_seconds=settings.storage_retry_max_seconds,
        storage_retry_limit=settings.storage_retry_limit,
    )
