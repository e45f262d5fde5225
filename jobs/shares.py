"""The model's fleet as the metrics and the fleet report read it: the backlog per model and
priority, and the recent rate. A job's own place in the claim order, its share and its ETA are
``jobs.progress``'s (``status`` reads them without SQLAlchemy)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import progress
from jobs.db import Item, Job
from jobs.lifecycle.common import OPEN_JOB_STATES
from jobs.progress import RATE_WINDOW as RATE_WINDOW  # re-exported: jobs.fleet_report
from jobs.sqlread import session_reader
from jobs.states import ItemStatus


def fleet_rate(session: Session, model: str, *, now: datetime) -> float | None:
    """``jobs.progress.fleet_rate`` in this session."""
    return progress.fleet_rate(session_reader(session), model, now=now)


def backlog(session: Session) -> list[tuple[str, int, int]]:
    """Queued items of open jobs per (model, priority): what waits to be claimed."""
    rows = session.execute(
        select(Job.model, Job.priority, func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(Job.status.in_(OPEN_JOB_STATES), Item.status == ItemStatus.queued)
        .group_by(Job.model, Job.priority)
    ).all()
    return [(str(model), int(priority), int(count)) for model, priority, count in rows]
