"""Per-process resources, built once and handed in: the settings, whole, and what is built from
them: session factory, blob access, the model.

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

from jobs.db import SessionFactory, make_session_factory, open_database
from jobs.fleet import Serving
from jobs.input_policy import InputPolicy
from jobs.settings import Settings
from model.engine import Engine, EngineSpec
from storage import Blobs, open_blobs
from workers import metrics
from workers.claim_gate import ClaimGate
from workers.helpers import decode_threads_per_slot as split_decode_threads
from workers.isolation import Isolation
from workers.malloc import cap_arenas
from workers.microbatch import MicroBatch

log = logging.getLogger(__name__)


@dataclass
class WorkerResources:
    """A worker process's settings, whole (every limit, budget and size is read from them:
    ``res.settings.max_image_pixels``), the handles built from them, and what is derived."""

    settings: Settings
    session_factory: SessionFactory
    blobs: Blobs
    engine_loader: Callable[[], Engine]
    # Whether this worker serves settings.model (LLAVA_BATCH_MODEL): it claims only the items
    # of jobs that name it and records it, its revision and quantisation on them. False (tests
    # with a fake engine): it claims any job's items and records no model.
    serves_model: bool = False
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    isolation: Isolation = field(default_factory=Isolation)
    # Closed by the one-process runner before it hands back what it holds (``workers.local``).
    claims: ClaimGate = field(default_factory=ClaimGate)
    # Derived from the settings. The GPU micro-batch: LLAVA_BATCH_GPU_BATCH_SIZE (0: the
    # engine's suggestion for its device), halved after an out-of-memory error.
    micro_batch: MicroBatch = field(init=False)
    # Decode threads of each slot: LLAVA_BATCH_DECODE_THREADS split between the worker's
    # LLAVA_BATCH_WORKER_SLOTS (the messages worked on at once, sharing the model).
    decode_threads_per_slot: int = field(init=False)
    # What an item's input may be read from: LLAVA_BATCH_INPUT_PREFIXES, and our own store.
    input_policy: InputPolicy = field(init=False)
    _engine: Engine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.micro_batch = MicroBatch(self.settings.gpu_batch_size)
        self.decode_threads_per_slot = split_decode_threads(
            self.settings.decode_threads, self.settings.worker_slots
        )
        self.input_policy = InputPolicy(self.settings.input_prefixes)

    @property
    def model(self) -> str | None:
        """The model this worker serves as jobs name it; None: any job's (``serves_model``)."""
        return self.settings.model if self.serves_model else None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    started = time.monotonic()
                    engine = self.engine_loader()
                    metrics.record_model_load(time.monotonic() - started)
                    metrics.record_model(
                        self.settings.model, engine.revision, self.settings.quantization
                    )
                    _share_cores(engine)
                    self._engine = engine
        return self._engine

    @property
    def serving(self) -> Serving | None:
        """What this worker serves; loads the engine (its revision is known once loaded)."""
        if self.model is None:
            return None
        takes = getattr(self.engine, "max_images", None)
        return Serving(self.model, self.engine.revision, self.settings.quantization, takes)


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
        grammar_cache_size=settings.grammar_cache_size,
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
    return load_engine(spec, on_grammar_lookup=metrics.record_grammar_lookup)


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
        settings=settings,
        session_factory=make_session_factory(open_database(settings)),
        blobs=open_blobs(settings.resolved_storage_url),
        engine_loader=engine_loader or (lambda: _with_faults(load_transformers_engine(spec))),
        serves_model=True,
    )
