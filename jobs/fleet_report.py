"""The fleet as the review page shows it (``serve``'s fleet page): per model, its live workers
(from the registry, ``jobs.fleet``), its backlog, its recent rate and its recent failures by
code. Reads only; the backlog is the one the metrics use (``jobs.shares``), the rate and the
live period the ones ``status`` uses (``jobs.progress``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job, WorkerRow, utcnow
from jobs.lifecycle.common import UNFINISHED_JOB_STATES
from jobs.progress import LIVE_PERIODS, RATE_WINDOW, fleet_rate
from jobs.shares import backlog
from jobs.sqlread import session_reader
from jobs.states import ItemStatus

# Failures are counted over this much of the recent past.
FAILURE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class LiveWorker:
    node: str
    revision: str | None
    quantization: str
    started_at: datetime
    seen_at: datetime


@dataclass
class ModelFleet:
    model: str
    workers: list[LiveWorker] = field(default_factory=list)
    backlog: int = 0  # queued items of its open jobs
    items_per_second: float | None = None  # over the last RATE_WINDOW
    failures: dict[str, int] = field(default_factory=dict)  # code -> count, FAILURE_WINDOW


def fleet_report(
    session: Session, *, heartbeat_seconds: float, now: datetime | None = None
) -> list[ModelFleet]:
    """One entry per model that has a live worker, a backlog or recent failures, by name."""
    now = now or utcnow()
    models: dict[str, ModelFleet] = {}

    def of(model: str) -> ModelFleet:
        return models.setdefault(model, ModelFleet(model))

    since = now - timedelta(seconds=heartbeat_seconds * LIVE_PERIODS)
    rows = session.scalars(
        select(WorkerRow).where(WorkerRow.seen_at >= since).order_by(WorkerRow.node)
    )
    for row in rows:
        of(row.model).workers.append(
            LiveWorker(row.node, row.model_revision, row.quantization, row.started_at, row.seen_at)
        )
    for model, _priority, queued in backlog(session):
        of(model).backlog += queued
    for model, code, count in _recent_failures(session, now=now):
        of(model).failures[code] = count
    reader = session_reader(session)
    for entry in models.values():
        entry.items_per_second = fleet_rate(reader, entry.model, now=now)
    return [models[name] for name in sorted(models)]


def _recent_failures(session: Session, *, now: datetime) -> list[tuple[str, str, int]]:
    """(model, error code, count) of items failed within ``FAILURE_WINDOW``, most first. Only
    jobs unfinished or ended within the window are read (the rate's own bound)."""
    since = now - FAILURE_WINDOW
    rows = session.execute(
        select(Job.model, Item.error_code, func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(
            or_(Job.status.in_(UNFINISHED_JOB_STATES), Job.finished_at > since),
            Item.finished_at > since,
            Item.status == ItemStatus.failed,
        )
        .group_by(Job.model, Item.error_code)
        .order_by(func.count().desc(), Item.error_code)
    ).all()
    return [(str(model), str(code), int(n)) for model, code, n in rows]


__all__ = ["FAILURE_WINDOW", "RATE_WINDOW", "LiveWorker", "ModelFleet", "fleet_report"]
