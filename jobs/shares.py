"""The backlog per model and priority, as the metrics and the fleet report read it. A job's
own place in the claim order, its share, its ETA and the model's recent rate are
``jobs.progress``'s (``status`` reads them without SQLAlchemy)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job
from jobs.lifecycle.common import OPEN_JOB_STATES
from jobs.states import ItemStatus


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
