"""How a job shares its model's fleet, as ``status`` shows it: its place in the claim order,
its share, what is ahead of it, and an ETA that accounts for the shares; and the backlog per
model and priority that the metrics export. Reads only; the order is the claim's
(``jobs.lifecycle.claims.claim_next``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job
from jobs.lifecycle.claims import has_claimable, within_window
from jobs.lifecycle.common import OPEN_JOB_STATES, UNFINISHED_JOB_STATES
from jobs.states import ItemStatus

# The model's fleet rate is measured over this much of the recent past.
RATE_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class Turn:
    """Where a job stands among the open jobs of its model that have work to claim."""

    position: int | None  # 1: its batch is taken next; None: nothing of it waits to be claimed
    active_jobs: int  # jobs of the model with work to claim
    share: float  # of the model's fleet it gets now: 0 behind a higher priority
    ahead: int  # queued items of jobs of higher priority, claimed before any of this one
    fleet_items_per_second: float | None  # the model's items finished per second, lately

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "active_jobs": self.active_jobs,
            "share": self.share,
            "ahead": self.ahead,
            "fleet_items_per_second": self.fleet_items_per_second,
        }


def read_turn(session: Session, job: Job, *, now: datetime) -> Turn:
    active = session.execute(
        select(Job.id, Job.priority)
        .where(
            Job.model == job.model,
            Job.status.in_(OPEN_JOB_STATES),
            within_window(Job, now),
            has_claimable(Job.id, now),
        )
        .order_by(Job.priority.desc(), Job.turn_at, Job.created_at, Job.id)
    ).all()
    ids = [row.id for row in active]
    position = ids.index(job.id) + 1 if job.id in ids else None
    higher = [row.id for row in active if row.priority > job.priority]
    peers = [row.id for row in active if row.priority == job.priority]
    share = 0.0 if higher or job.id not in peers else 1 / len(peers)
    ahead = _queued(session, higher) if higher else 0
    return Turn(position, len(active), share, ahead, fleet_rate(session, job.model, now=now))


def eta_seconds(
    session: Session, job: Job, turn: Turn, remaining: int, *, now: datetime
) -> float | None:
    """Seconds until ``job``'s ``remaining`` items are done at the model's recent rate: first
    what higher priorities have queued, then its share beside the jobs of its own priority,
    each of which takes a batch in turn until it runs out (so a peer with fewer items left
    than this job slows it only for as long as it lasts). None without a recent rate."""
    rate = turn.fleet_items_per_second
    if not remaining:
        return 0.0
    if not rate:
        return None
    peers = session.scalars(
        select(Job.id).where(
            Job.model == job.model,
            Job.status.in_(OPEN_JOB_STATES),
            Job.priority == job.priority,
            Job.id != job.id,
            within_window(Job, now),
            has_claimable(Job.id, now),
        )
    ).all()
    shared = sum(_queued(session, [peer], cap=remaining) for peer in peers)
    return (turn.ahead + remaining + shared) / rate


def fleet_rate(session: Session, model: str, *, now: datetime) -> float | None:
    """Items of ``model`` finished per second over the last ``RATE_WINDOW``; None if none."""
    since = now - RATE_WINDOW
    finished = session.scalar(
        select(func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(
            Job.model == model,
            or_(Job.status.in_(UNFINISHED_JOB_STATES), Job.finished_at > since),
            Item.finished_at > since,
            Item.status.in_((ItemStatus.succeeded, ItemStatus.failed)),
        )
    )
    return (finished / RATE_WINDOW.total_seconds()) if finished else None


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


def _queued(session: Session, job_ids: list[str], *, cap: int | None = None) -> int:
    """Queued items of these jobs, counted up to ``cap`` (a bounded read of the index)."""
    inner = select(Item.id).where(Item.job_id.in_(job_ids), Item.status == ItemStatus.queued)
    if cap is not None:
        inner = inner.limit(cap)
    return int(session.scalar(select(func.count()).select_from(inner.subquery())) or 0)
