"""Which worker serves which model: one broker queue per model, and a registry of live workers.

A job's model selects its queue; a worker consumes only the queue of the model it serves and
claims only that model's items, so several models share one deployment without a job ever
running on the wrong one. The registry is a table each worker beats every few seconds: the
database is the system of record, and a producer can ask it without waiting on the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from jobs import progress
from jobs.db import SessionFactory, WorkerRow, utcnow
from jobs.sqlread import session_reader

# Rows of workers not seen this long are deleted by the sweeper (LLAVA_BATCH_WORKER_ROWS_KEPT_FOR),
# at most FORGET_ROWS a pass: a fleet that scaled down by thousands is forgotten over a few
# passes, in short statements.
WORKER_ROWS_KEPT_FOR = timedelta(days=7)
FORGET_ROWS = 500


def queue_for(base: str, model: str) -> str:
    """The broker queue of ``model``'s jobs; ``base`` is the deployment's queue prefix."""
    return f"{base}.{model}"


@dataclass(frozen=True)
class Serving:
    """What a worker runs: recorded on every item it claims, and in the registry."""

    model: str
    revision: str | None
    quantization: str
    max_images: int | None = None  # images one request may show the model; None: any number


def beat_worker(
    session_factory: SessionFactory, node: str, serving: Serving, *, now: datetime | None = None
) -> None:
    """Says ``node`` is alive and serves ``serving`` (insert or refresh its row)."""
    now = now or utcnow()
    values = {
        "model": serving.model,
        "model_revision": serving.revision,
        "quantization": serving.quantization,
        "max_images": serving.max_images,
        "seen_at": now,
    }
    with session_factory.begin() as session:
        refreshed = session.execute(
            update(WorkerRow).where(WorkerRow.node == node).values(**values)
        )
        if not refreshed.rowcount:  # type: ignore[attr-defined]
            # Only this node's own thread writes this row, so no other insert races this one.
            session.add(WorkerRow(node=node, started_at=now, **values))


def forget_worker(session_factory: SessionFactory, node: str) -> None:
    """Removes ``node`` from the registry (a clean shutdown)."""
    with session_factory.begin() as session:
        session.execute(delete(WorkerRow).where(WorkerRow.node == node))


def forget_dead_workers(
    session_factory: SessionFactory,
    *,
    kept_for: timedelta = WORKER_ROWS_KEPT_FOR,
    now: datetime | None = None,
    limit: int = FORGET_ROWS,
) -> int:
    """Deletes the rows of workers not seen for longer than ``kept_for``, the longest gone
    first, at most ``limit``; returns how many. A live worker beats every few seconds and
    ``kept_for`` is at least a day, so its row is never one of them; a worker that comes
    back after longer just inserts its row again."""
    now = now or utcnow()
    gone = WorkerRow.seen_at < now - kept_for
    oldest = select(WorkerRow.node).where(gone).order_by(WorkerRow.seen_at).limit(limit)
    with session_factory.begin() as session:
        # The age is checked again on the row deleted: a worker that beat meanwhile stays.
        deleted = session.execute(
            delete(WorkerRow).where(WorkerRow.node.in_(oldest.scalar_subquery()), gone)
        )
    return int(deleted.rowcount)  # type: ignore[attr-defined]


def live_workers(
    session_factory: SessionFactory,
    model: str,
    *,
    heartbeat_seconds: float,
    now: datetime | None = None,
) -> int:
    """``jobs.progress.live_workers`` in a session of its own."""
    with session_factory() as session:
        return progress.live_workers(
            session_reader(session), model, heartbeat_seconds=heartbeat_seconds, now=now
        )


def images_per_request(session_factory: SessionFactory, model: str) -> int | None:
    """How many images one request may show ``model``, as the registry's workers for it said:
    the most any of them takes (a request some worker can run is not refused), None when one
    takes any number or none is known (the worker that claims the item judges then)."""
    with session_factory() as session:
        limits = session.scalars(select(WorkerRow.max_images).where(WorkerRow.model == model))
        known = list(limits)
    if not known or any(limit is None for limit in known):
        return None
    return max(limit for limit in known if limit is not None)


def served_models(session_factory: SessionFactory, configured: str) -> list[str]:
    """The models this deployment serves, sorted: ``configured`` (``LLAVA_BATCH_MODEL``, what a
    ``worker`` or ``run --resume`` started with these settings loads) and every model a worker
    of the registry beat for, live or not: a fleet that scaled to zero overnight still serves
    its models in the morning. The sweeper forgets a worker not seen for
    ``LLAVA_BATCH_WORKER_ROWS_KEPT_FOR`` (``forget_dead_workers``), and its model with it."""
    with session_factory() as session:
        named = session.scalars(select(WorkerRow.model).distinct()).all()
    return sorted({configured, *named})
