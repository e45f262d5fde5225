"""The completion window: what has not started when it passes ends ``expired``; a job's
priority changed while it runs."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select, update

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.errors import ItemErrorCode, JobNotFoundError, JobsError, RequestError
from jobs.hooks import reached
from jobs.lifecycle.common import (
    OPEN_JOB_STATES,
    UNFINISHED_JOB_STATES,
    is_postgres,
    queued_items_of,
)
from jobs.lifecycle.finalise import finalise_jobs
from jobs.limits import MAX_PRIORITY, MIN_PRIORITY
from jobs.states import ItemStatus

log = logging.getLogger(__name__)

EXPIRED_MESSAGE = "The job's completion window passed before this item started."


def expire_windows(
    session_factory: SessionFactory,
    *,
    now: datetime | None = None,
    among: Collection[str] | None = None,
) -> int:
    """Ends ``expired`` the queued items of open jobs whose completion window has passed, and
    finalises those jobs when nothing of them runs (they end ``expired``). Running batches
    finish and keep their results; an item that comes back to the queue later (handed back, a
    lost lease) is expired by the next pass. One short transaction per job, the job row taken
    first (a cancel's order); returns how many items it expired."""
    now = now or utcnow()
    due = select(Job.id).where(
        Job.status.in_(OPEN_JOB_STATES), Job.expires_at.is_not(None), Job.expires_at <= now
    )
    if among is not None:
        due = due.where(Job.id.in_(sorted(among)))
    with session_factory() as session:
        job_ids = list(session.scalars(due.order_by(Job.expires_at)))
    expired = 0
    for job_id in job_ids:
        expired += _expire_job(session_factory, job_id, now)
    finalise_jobs(session_factory, job_ids, now=now)
    return expired


def _expire_job(session_factory: SessionFactory, job_id: str, now: datetime) -> int:
    past_window = (
        select(Job.id)
        .where(
            Job.id == job_id,
            Job.status.in_(OPEN_JOB_STATES),
            Job.expires_at.is_not(None),
            Job.expires_at <= now,
        )
        .exists()
    )
    with session_factory.begin() as session:
        if is_postgres(session):
            # The job row first, then its items, as a cancel and a claim take them; a job that
            # a retry, cancel or claim holds now is looked at again by the next pass.
            held = session.scalar(
                select(Job.id).where(Job.id == job_id).with_for_update(skip_locked=True)
            )
            if held is None:
                return 0
        # SQLite: one statement, so the write lock is taken at once (a read first could not
        # be upgraded once another writer committed).
        reached("expire_window:locked")
        count = session.execute(
            update(Item)
            .where(
                Item.id.in_(queued_items_of(session, job_id)),
                Item.status == ItemStatus.queued,
                past_window,
            )
            .values(
                status=ItemStatus.expired,
                error_code=ItemErrorCode.batch_expired,
                error_message=EXPIRED_MESSAGE,
                finished_at=now,
                dispatched_at=None,
                not_before=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    if count:
        log.info("completion window passed job=%s expired=%d", job_id, count)
    return int(count or 0)


def set_priority(session_factory: SessionFactory, job_id: str, priority: int) -> int:
    """Changes an unfinished job's priority; its next batches are claimed in the new order.
    Returns the priority it had."""
    check_priority(priority)
    with session_factory.begin() as session:
        before = session.scalar(
            select(Job.priority).where(Job.id == job_id, Job.status.in_(UNFINISHED_JOB_STATES))
        )
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED_JOB_STATES))
            .values(priority=priority)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not changed:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None:
                raise JobNotFoundError(f"No job {job_id}.")
            raise JobsError(
                f"Job {job_id} has ended ({status}); its priority no longer matters.",
                code="job_finished",
            )
    log.info("job priority job=%s %s -> %s", job_id, before, priority)
    return int(before if before is not None else 0)


def check_priority(priority: int) -> None:
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise RequestError(
            f"A priority is an integer from {MIN_PRIORITY} to {MAX_PRIORITY} (got {priority}).",
            code="invalid_request",
        )
