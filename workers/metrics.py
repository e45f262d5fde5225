"""Prometheus metrics of a process that runs the model (a worker, ``llava-batch run``): the
hooks that record them are small calls at the places where things happen. What a sweeper
records too (its actions, failures by code, the backlog) and the server that serves them all
are ``jobs.metrics``'.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram, Info

from jobs.metrics import PREFIX, record_failures

log = logging.getLogger(__name__)


# Seconds: a batch message of a few images on a GPU up to a large batch on a CPU.
_BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_GENERATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

ITEMS = Counter(
    f"{PREFIX}_items",
    "Items a worker finished, by job kind and status (succeeded, failed; released: handed "
    "back after a transient storage error; reused: an earlier result copied, the model not "
    "run).",
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
MODEL = Info(
    f"{PREFIX}_model",
    "The model this process serves: its name, revision (the checkpoint's commit; empty when "
    "unknown) and quantization (none, 8bit, 4bit), as its items record them.",
)
MODEL_LOAD = Gauge(f"{PREFIX}_model_load_seconds", "How long loading the resident model took.")
LEASE_RENEWALS = Counter(
    f"{PREFIX}_lease_renewals",
    "Lease renewals (heartbeats), by result (renewed, failed).",
    ["result"],
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


def record_batch(
    kind: str,
    seconds: float,
    succeeded: int,
    failures: Sequence[str],
    released: int,
    *,
    reused: int = 0,
) -> None:
    """One batch message: its duration, its items by status (``succeeded``: by a model run;
    ``reused``: copies of earlier results), and each failure's error code."""
    BATCH_DURATION.labels(kind).observe(seconds)
    counts = (
        ("succeeded", succeeded),
        ("failed", len(failures)),
        ("released", released),
        ("reused", reused),
    )
    for status, count in counts:
        if count:
            ITEMS.labels(kind, status).inc(count)
    record_failures(failures)


def record_generate(seconds: float, tokens_out: int, tokens_in: int) -> None:
    GENERATE_DURATION.observe(seconds)
    TOKENS_GENERATED.inc(tokens_out)
    PROMPT_TOKENS.inc(tokens_in)


def record_model_load(seconds: float) -> None:
    MODEL_LOAD.set(seconds)


def record_model(model: str, revision: str | None, quantization: str) -> None:
    MODEL.info({"model": model, "revision": revision or "", "quantization": quantization})


def record_lease_renewal(ok: bool) -> None:
    LEASE_RENEWALS.labels("renewed" if ok else "failed").inc()


def record_grammar_lookup(hit: bool) -> None:
    GRAMMAR_CACHE.labels("hit" if hit else "miss").inc()


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
