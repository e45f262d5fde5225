"""Thin Celery tasks: unpack ids, hand them to the pipeline with this process's resources."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from jobs.dispatch import RUN_BATCH_TASK, SWEEP_TASK, CeleryPublisher
from jobs.fleet import beat_worker, forget_worker, queue_for
from jobs.maintenance import MaintenanceReport, run_maintenance
from model.errors import ModelLoadError
from workers import metrics
from workers.celery_app import app, settings, warn_if_insecure
from workers.pipeline import BatchReport, process_batch
from workers.resources import WorkerResources, build_resources

log = logging.getLogger(__name__)

_resources: WorkerResources | None = None
_resources_lock = threading.Lock()
_stop = threading.Event()
_node: str | None = None  # this worker's Celery node name, its key in the registry


def get_resources() -> WorkerResources:
    global _resources
    if _resources is None:
        with _resources_lock:
            if _resources is None:
                _resources = build_resources(settings)
    return _resources


@app.task(name=RUN_BATCH_TASK, ignore_result=True)
def run_batch_task(
    job_id: str, item_ids: list[str], dispatched_at: str | None = None
) -> dict[str, int]:
    # dispatched_at is read by the sweeper from messages still waiting, not here.
    log.info("batch received job=%s items=%d", job_id, len(item_ids))
    report: BatchReport = process_batch(item_ids, get_resources())
    return asdict(report)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> dict[str, int]:
    return asdict(run_sweep())


def run_sweep() -> MaintenanceReport:
    res = get_resources()
    publisher = CeleryPublisher(settings.broker_url, settings.queue, app=app)
    report = run_maintenance(res.session_factory, res.blobs, publisher, settings)
    metrics.record_sweep(report.sweep)
    return report


def sweep_forever(interval: float) -> None:
    while not _stop.wait(interval):
        try:
            run_sweep()
        except Exception:  # the sweeper must outlive a bad pass (DB blip, broker down)
            log.exception("sweep pass failed")


def beat_forever(node: str, interval: float) -> None:
    """Keeps this worker in the registry (``jobs.fleet``) while it runs."""
    res = get_resources()
    while True:
        try:
            serving = res.serving
            if serving is not None:
                beat_worker(res.session_factory, node, serving)
        except Exception:  # a missed beat is not fatal; three in a row make the worker "gone"
            log.exception("worker heartbeat failed")
        if _stop.wait(interval):
            return


@worker_ready.connect
def _warm_up(sender: Any = None, **_: Any) -> None:
    warn_if_insecure(settings.broker_url)
    queue = queue_for(settings.queue, settings.model)
    metrics.watch_queue_depth(queue, metrics.redis_queue_depth(settings.broker_url, queue))
    metrics.start_metrics_server(settings.metrics_port)
    res = get_resources()
    # Load the model before the first message so the first batch is not slow; a checkpoint
    # that cannot load stops the worker here instead of failing every item.
    try:
        engine = res.engine
    except ModelLoadError as exc:
        log.critical("model cannot be loaded, stopping the worker: %s", exc)
        os._exit(3)  # engine dead: let the supervisor see it rather than fail every item
    log.info(
        "worker ready model=%s queue=%s slots=%d decode_threads_per_slot=%d",
        engine.name,
        queue,
        res.slots,
        res.decode_threads,
    )
    global _node
    _node = getattr(sender, "hostname", None) or res.worker_name
    threading.Thread(
        target=beat_forever,
        args=(_node, float(settings.worker_heartbeat_seconds)),
        name="llava-batch-heartbeat",
        daemon=True,
    ).start()
    if app.conf.get("llava_batch_sweep", True):
        threading.Thread(
            target=sweep_forever,
            args=(float(settings.sweep_interval_seconds),),
            name="llava-batch-sweeper",
            daemon=True,
        ).start()


@worker_shutting_down.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
    if _node is not None and _resources is not None:
        try:
            forget_worker(_resources.session_factory, _node)
        except Exception as exc:  # it drops out of "live" by itself after three heartbeats
            log.warning("could not leave the worker registry: %s", exc)
