"""Prometheus metrics of one worker process: every metric is defined here, the hooks that
record them are small calls at the places where things happen, and ``start_metrics_server``
serves them over HTTP (``LLAVA_BATCH_METRICS_PORT``).

Several workers on one host (one per GPU) each take the first free port from the configured
one up: 9464, 9465, … (``PORT_TRIES`` ports); the port used is logged.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from jobs.sweeper import SweepReport

log = logging.getLogger(__name__)

PREFIX = "llava_batch"
PORT_TRIES = 16

# Seconds: a batch message of a few images on a GPU up to a large batch on a CPU.
_BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_GENERATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

ITEMS = Counter(
    f"{PREFIX}_items",
    "Items a worker finished, by job kind and status (succeeded, failed; released: handed "
    "back after a transient storage error).",
    ["kind", "status"],
)
BATCH_DURATION = Histogram(
    f"{PREFIX}_batch_duration_seconds",
    "Time to process one batch message, from claim to recorded results, by job kind.",
    ["kind"],
    buckets=_BATCH_BUCKETS,
)
GENERATE_DURATION = Histogram(
    f"{PREFIX}_generate_duration_seconds",
    "Time of one batched call to the model's generate.",
    buckets=_GENERATE_BUCKETS,
)
TOKENS_GENERATED = Counter(f"{PREFIX}_tokens_generated", "Tokens the model generated.")
PROMPT_TOKENS = Counter(
    f"{PREFIX}_prompt_tokens", "Prompt tokens the model read (text, template and image tokens)."
)
MODEL_LOAD = Gauge(f"{PREFIX}_model_load_seconds", "How long loading the resident model took.")
LEASE_RENEWALS = Counter(
    f"{PREFIX}_lease_renewals",
    "Lease renewals (heartbeats), by result (renewed, failed).",
    ["result"],
)
SWEEPER_ACTIONS = Counter(
    f"{PREFIX}_sweeper_actions",
    "What this worker's sweeper thread did: items requeued, failed_worker_lost, cancelled, "
    "republished, expired; doorbells rung; jobs finalised, abandoned.",
    ["action"],
)
GRAMMAR_CACHE = Counter(
    f"{PREFIX}_grammar_cache_lookups",
    "Lookups of a compiled JSON grammar (extract jobs), by result: hit, or miss (compiled "
    "again; LLAVA_BATCH_GRAMMAR_CACHE_SIZE bounds what is kept).",
    ["result"],
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth",
    "Messages (doorbells, and items sent alone) waiting in the broker queue, read at scrape "
    "time (NaN: broker unreachable); the backlog is llava_batch_backlog_items.",
    ["queue"],
)


BACKLOG = Gauge(
    f"{PREFIX}_backlog_items",
    "Queued items of open jobs, per model and priority, read from the database by each sweep "
    "pass (the broker holds a few doorbells, not the backlog).",
    ["model", "priority"],
)


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


def record_batch(kind: str, seconds: float, succeeded: int, failed: int, released: int) -> None:
    BATCH_DURATION.labels(kind).observe(seconds)
    for status, count in (("succeeded", succeeded), ("failed", failed), ("released", released)):
        if count:
            ITEMS.labels(kind, status).inc(count)


def record_generate(seconds: float, tokens_out: int, tokens_in: int) -> None:
    GENERATE_DURATION.observe(seconds)
    TOKENS_GENERATED.inc(tokens_out)
    PROMPT_TOKENS.inc(tokens_in)


def record_model_load(seconds: float) -> None:
    MODEL_LOAD.set(seconds)


def record_lease_renewal(ok: bool) -> None:
    LEASE_RENEWALS.labels("renewed" if ok else "failed").inc()


def record_grammar_lookup(hit: bool) -> None:
    GRAMMAR_CACHE.labels("hit" if hit else "miss").inc()


def record_sweep(report: SweepReport) -> None:
    for action, count in vars(report).items():
        if count:
            SWEEPER_ACTIONS.labels(action).inc(count)


def watch_queue_depth(queue: str, read_depth: Callable[[], int | None]) -> None:
    """Reads the queue depth at each scrape; None (broker unreachable) shows as NaN."""

    def depth() -> float:
        value = read_depth()
        return math.nan if value is None else float(value)

    QUEUE_DEPTH.labels(queue).set_function(depth)


def redis_queue_depth(broker_url: str, queue: str) -> Callable[[], int | None]:
    """Messages waiting in a Redis-backed Celery queue (a Redis list named after the queue)."""

    def read() -> int | None:
        if not broker_url.startswith(("redis://", "rediss://")):
            return None
        try:
            import redis

            client = redis.Redis.from_url(broker_url, socket_timeout=2)
            try:
                return int(client.llen(queue))
            finally:
                client.close()
        except Exception:
            return None

    return read


def start_metrics_server(
    port: int, *, tries: int = PORT_TRIES, registry: CollectorRegistry | None = None
) -> int | None:
    """Serves /metrics on the first free port of ``port`` … ``port + tries - 1``; returns the
    port used, or None (logged) when the metrics are off (port 0) or every port is taken."""
    if port == 0:
        return None
    for candidate in range(port, min(port + tries, 65536)):
        try:
            start_http_server(candidate, registry=registry or REGISTRY)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            # Metrics never stop the work (e.g. a port below 1024 without the right to bind).
            log.error("metrics not served: port %d: %s", candidate, exc)
            return None
        log.info("metrics served on port %d (/metrics)", candidate)
        return candidate
    log.warning("metrics not served: ports %d to %d are all taken", port, port + tries - 1)
    return None
