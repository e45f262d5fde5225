"""Prometheus metrics that any llava-batch process may serve: a worker (``workers.metrics`` adds
its own), ``llava-batch run`` and ``llava-batch sweep``. ``start_metrics_server`` serves them
over HTTP on ``LLAVA_BATCH_METRICS_PORT``.

Several processes on one host (one worker per GPU, a sweeper beside them) each take the first
free port from the configured one up: 9464, 9465, … (``PORT_TRIES`` ports), and say the port
used. ``LLAVA_BATCH_METRICS_PORT_FIXED`` serves on that port or not at all: a scrape target
that names a port must find the process it means there, not whichever took the next one.

prometheus_client is imported here, and this module only inside the commands that serve.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server

from jobs.errors import ItemErrorCode, JobsError
from jobs.shares import backlog
from jobs.sweeper import SweepReport

if TYPE_CHECKING:
    from jobs.db import SessionFactory
    from jobs.maintenance import MaintenanceReport
    from jobs.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "llava_batch"
PORT_TRIES = 16

SWEEPER_ACTIONS = Counter(
    f"{PREFIX}_sweeper_actions",
    "What this process's sweeper did: items requeued, failed_worker_lost, cancelled, "
    "republished, expired; doorbells rung; jobs finalised, abandoned.",
    ["action"],
)
FAILURES = Counter(
    f"{PREFIX}_item_failures",
    "Items that ended failed, by error code (docs/errors.md): recorded by a worker, or "
    "worker_lost by a sweeper.",
    ["code"],
)
BACKLOG = Gauge(
    f"{PREFIX}_backlog_items",
    "Queued items of open jobs, per model and priority, read from the database by each sweep "
    "pass (the broker holds a few doorbells, not the backlog).",
    ["model", "priority"],
)


class MetricsPortTakenError(JobsError):
    """Raised when LLAVA_BATCH_METRICS_PORT_FIXED is set and its port is taken."""

    code = "metrics_port_taken"


def record_failures(codes: Iterable[str]) -> None:
    for code in codes:
        FAILURES.labels(code).inc()


def record_sweep(report: SweepReport) -> None:
    for action, count in vars(report).items():
        if count:
            SWEEPER_ACTIONS.labels(action).inc(count)
    if report.failed_worker_lost:
        FAILURES.labels(ItemErrorCode.worker_lost).inc(report.failed_worker_lost)


def record_backlog(rows: Iterable[tuple[str, int, int]]) -> None:
    """Sets the backlog gauge from (model, priority, queued) rows; a series that is no longer
    in them (its jobs ended) drops to 0."""
    seen = set()
    for model, priority, queued in rows:
        BACKLOG.labels(model, str(priority)).set(queued)
        seen.add((model, str(priority)))
    for labels in list(_backlog_labels):
        if labels not in seen:
            BACKLOG.labels(*labels).set(0)
    _backlog_labels.update(seen)


_backlog_labels: set[tuple[str, str]] = set()


def record_maintenance(report: MaintenanceReport, session_factory: SessionFactory) -> None:
    """What one sweeper pass did, and the backlog it leaves (a worker's sweeper thread and
    ``llava-batch sweep`` alike)."""
    record_sweep(report.sweep)
    with session_factory() as session:
        record_backlog(backlog(session))


_served: list[int] = []  # the port this process serves REGISTRY on, once started
_serving = threading.Lock()


def serve_metrics(settings: Settings, *, address: str = "0.0.0.0") -> int | None:
    """Serves this process's metrics as the settings say and returns the port (None: not
    served). Once per process: a second call answers the port already served.
    MetricsPortTakenError for a fixed port that cannot be served. ``address``: where to
    listen (a worker or sweeper is scraped from elsewhere; ``run`` on a laptop is not)."""
    with _serving:
        if _served:
            return _served[0]
        port = start_metrics_server(
            settings.metrics_port,
            tries=1 if settings.metrics_port_fixed else PORT_TRIES,
            address=address,
        )
        if port is None and settings.metrics_port_fixed and settings.metrics_port != 0:
            raise MetricsPortTakenError(
                f"metrics cannot be served on port {settings.metrics_port}, which "
                "LLAVA_BATCH_METRICS_PORT_FIXED requires (another process holds it?): free it, "
                "or set LLAVA_BATCH_METRICS_PORT to another port."
            )
        if port is not None:
            _served.append(port)
        return port


def start_metrics_server(
    port: int,
    *,
    tries: int = PORT_TRIES,
    registry: CollectorRegistry | None = None,
    address: str = "0.0.0.0",
) -> int | None:
    """Serves /metrics on the first free port of ``port`` … ``port + tries - 1``; returns the
    port used, or None (logged) when the metrics are off (port 0) or every port is taken."""
    if port == 0:
        return None
    for candidate in range(port, min(port + tries, 65536)):
        try:
            start_http_server(candidate, addr=address, registry=registry or REGISTRY)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            # Metrics never stop the work (e.g. a port below 1024 without the right to bind).
            log.error("metrics not served: port %d: %s", candidate, exc)
            return None
        return candidate  # the caller says where (a log line, or the CLI's stderr)
    log.warning("metrics not served: ports %d to %d are all taken", port, port + tries - 1)
    return None
