"""Thin Celery tasks: unpack ids, hand them to the pipeline with this process's resources.

Nothing here runs at import: ``register`` binds the tasks and the worker's signals to one app
built from one ``Settings`` (``build_worker``), and the process's resources (the model among
them) are built on first use. ``celery -A workers.tasks worker`` works too (its app built from
the environment on first access), but ``llava-batch worker`` picks a CUDA-safe pool for you.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from jobs.db import utcnow
from jobs.dispatch import (
    RUN_BATCH_TASK,
    SWEEP_TASK,
    CeleryPublisher,
    DispatchError,
    doorbells_to_send,
)
from jobs.errors import ExitCode
from jobs.fleet import beat_worker, forget_worker, queue_for
from jobs.maintenance import MaintenanceReport, run_maintenance
from jobs.metrics import MetricsPortTakenError, record_maintenance, serve_metrics
from jobs.settings import Settings, load_settings
from model.errors import ModelLoadError
from workers import metrics
from workers.celery_app import build_celery_app, warn_if_insecure
from workers.pipeline import BatchReport, process_batch
from workers.resources import WorkerResources, build_resources

log = logging.getLogger(__name__)


class WorkerProcess:
    """One worker process: its settings, its resources (built once, on first use), and the
    heartbeat and sweeper threads it runs beside the Celery pool."""

    def __init__(self, app: Celery, settings: Settings, *, sweep: bool = True) -> None:
        self.app = app
        self.settings = settings
        self.sweep = sweep  # also run the sweeper (llava-batch worker --no-sweep turns it off)
        self._resources: WorkerResources | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._node: str | None = None  # this worker's Celery node name, its registry key
        self._publisher: CeleryPublisher | None = None

    @property
    def resources(self) -> WorkerResources:
        if self._resources is None:
            with self._lock:
                if self._resources is None:
                    self._resources = build_resources(self.settings)
        return self._resources

    @property
    def publisher(self) -> CeleryPublisher:
        if self._publisher is None:
            self._publisher = CeleryPublisher.for_settings(self.settings, app=self.app)
        return self._publisher

    def run_batch(self, item_ids: list[str]) -> BatchReport:
        report = process_batch(item_ids, self.resources)
        if not item_ids and report.claimed:
            self.ring_again()
        return report

    def ring_again(self) -> None:
        """A doorbell that found work rings once more, so a model's queue keeps its doorbells
        while work lasts; one that found none is not replaced, and they die out."""
        model = self.settings.model
        try:
            publisher = self.publisher
            publisher.ring(model, doorbells_to_send(publisher, model, 1), dispatched_at=utcnow())
        except DispatchError as exc:  # the sweeper rings for the queue later
            log.warning("could not ring again model=%s: %s", model, exc)

    def run_sweep(self) -> MaintenanceReport:
        res = self.resources
        report = run_maintenance(res.session_factory, res.blobs, self.publisher, self.settings)
        record_maintenance(report, res.session_factory)
        return report

    def sweep_forever(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.run_sweep()
            except Exception:  # the sweeper must outlive a bad pass (DB blip, broker down)
                log.exception("sweep pass failed")

    def beat_forever(self, node: str, interval: float) -> None:
        """Keeps this worker in the registry (``jobs.fleet``) while it runs."""
        res = self.resources
        while True:
            try:
                serving = res.serving
                if serving is not None:
                    beat_worker(res.session_factory, node, serving)
            except Exception:  # a missed beat is not fatal; three in a row make it "gone"
                log.exception("worker heartbeat failed")
            if self._stop.wait(interval):
                return

    def warm_up(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", self.app) is not self.app:
            return  # another app's worker (only tests build several in one process)
        settings = self.settings
        warn_if_insecure(settings.broker_url)
        queue = queue_for(settings.queue, settings.model)
        metrics.watch_queue_depth(queue, metrics.redis_queue_depth(settings.broker_url, queue))
        try:
            port = serve_metrics(settings)  # llava-batch worker started them: the port then
        except MetricsPortTakenError as exc:
            log.critical("stopping the worker: %s", exc)
            os._exit(ExitCode.invalid_request)
        if port is not None:
            log.info("metrics served on port %d (/metrics)", port)
        res = self.resources
        # Load the model before the first message so the first batch is not slow; a
        # checkpoint that cannot load stops the worker here instead of failing every item.
        try:
            engine = res.engine
        except ModelLoadError as exc:
            log.critical("model cannot be loaded, stopping the worker: %s", exc)
            os._exit(3)  # engine dead: let the supervisor see it rather than fail every item
        log.info(
            "worker ready model=%s queue=%s slots=%d decode_threads_per_slot=%d",
            engine.name,
            queue,
            res.settings.worker_slots,
            res.decode_threads_per_slot,
        )
        self._node = getattr(sender, "hostname", None) or res.worker_name
        threading.Thread(
            target=self.beat_forever,
            args=(self._node, float(settings.worker_heartbeat_seconds)),
            name="llava-batch-heartbeat",
            daemon=True,
        ).start()
        if self.sweep:
            threading.Thread(
                target=self.sweep_forever,
                args=(float(settings.sweep_interval_seconds),),
                name="llava-batch-sweeper",
                daemon=True,
            ).start()

    def stop(self, **_: Any) -> None:
        self._stop.set()
        if self._node is not None and self._resources is not None:
            try:
                forget_worker(self._resources.session_factory, self._node)
            except Exception as exc:  # it drops out of "live" by itself after three beats
                log.warning("could not leave the worker registry: %s", exc)


def register(app: Celery, settings: Settings, *, sweep: bool = True) -> WorkerProcess:
    """Binds the tasks and the worker's signals to ``app``; returns the process they run in."""
    process = WorkerProcess(app, settings, sweep=sweep)

    @app.task(name=RUN_BATCH_TASK, ignore_result=True)
    def run_batch_task(
        job_id: str | None = None,
        item_ids: list[str] | None = None,
        dispatched_at: str | None = None,
        model: str | None = None,
    ) -> dict[str, int]:
        # A doorbell names a model, and the claim picks the job; a message that names its items
        # is an item that lost a worker (sent alone). dispatched_at is read by the sweeper from
        # messages still waiting, not here.
        if item_ids:
            log.info("batch received job=%s items=%d", job_id, len(item_ids))
        return asdict(process.run_batch(list(item_ids or [])))

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep_task() -> dict[str, int]:
        return asdict(process.run_sweep())

    worker_ready.connect(process.warm_up, weak=False)
    worker_shutting_down.connect(process.stop, weak=False)
    return process


def build_worker(settings: Settings, *, sweep: bool = True) -> tuple[Celery, WorkerProcess]:
    """A worker's app: the configuration (``workers.celery_app``) with the tasks bound."""
    app = build_celery_app(settings)
    return app, register(app, settings, sweep=sweep)


_built: list[Celery] = []


def __getattr__(name: str) -> Celery:
    """``workers.tasks.app``, for ``celery -A workers.tasks worker``: built from the
    environment's settings when first asked for, never at import."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _built:
        _built.append(build_worker(load_settings())[0])
    return _built[0]
