"""Cancel and retry: the transitions a user asks for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    case,
    delete,
    select,
    update,
)
from sqlalchemy.orm import Session

from jobs.db import Item, ItemPage, Job, SessionFactory, utcnow
from jobs.errors import JobNotFoundError, JobsError
from jobs.hooks import reached
from jobs.lifecycle.common import CLOSING_JOB_STATES, OPEN_JOB_STATES, queued_items_of
from jobs.lifecycle.finalise import finalise_in_session
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus

log = logging.getLogger(__name__)


def cancel_job(session_factory: SessionFactory, job_id: str, *, now: datetime | None = None) -> str:
    """Cancels queued items now; running ones finish (their results are kept), and items handed
    back later end cancelled. Returns the job's status afterwards."""
    now = now or utcnow()
    with session_factory.begin() as session:
        status = session.scalar(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(OPEN_JOB_STATES))
            .values(status=JobStatus.cancelling)
            .returning(Job.status)
            .execution_options(synchronize_session=False)
        )
        if status is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None or status == JobStatus.deleting:
                raise JobNotFoundError(f"No job {job_id}.")
            if status in TERMINAL_JOB_STATES:
                return status
        reached("cancel:marked")
        cancel_queued_items(session, job_id, now=now)
        final = session.scalar(select(Job.status).where(Job.id == job_id))
    log.info("job cancel requested job=%s status=%s", job_id, final)
    return str(final)


def cancel_queued_items(session: Session, job_id: str, *, now: datetime) -> None:
    """The rest of a cancel, in the caller's transaction that has just marked the job
    ``cancelling`` (so holds its row): queued items end cancelled, then the job ends if
    nothing of it runs."""
    session.execute(
        update(Item)
        .where(Item.id.in_(queued_items_of(session, job_id)), Item.status == ItemStatus.queued)
        .values(status=ItemStatus.cancelled, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    finalise_in_session(session, job_id, now=now)


RETRYABLE_ITEM_STATES = (ItemStatus.failed, ItemStatus.expired)


def requeue_failed(
    session_factory: SessionFactory,
    job_id: str,
    *,
    only: Sequence[str] = RETRYABLE_ITEM_STATES,
    now: datetime | None = None,
) -> list[str]:
    """Puts a job's failed and expired items (``only``: those states) back in the queue with a
    fresh attempt budget and no pages; a job with a completion window gets a new one, from now.

    The items are stamped dispatched; the caller publishes them after this commits (and calls
    ``undo_dispatch`` if it cannot)."""
    now = now or utcnow()
    states = [ItemStatus(state) for state in only]
    has_failed = select(Item.id).where(Item.job_id == Job.id, Item.status.in_(states)).exists()
    # The window's length is the job's setting, never changed after submit: reading it first
    # leaves the update below as conditional as before. Read apart: on SQLite the transaction
    # below must start with its write.
    with session_factory() as session:
        window = session.scalar(select(Job.completion_window_seconds).where(Job.id == job_id))
    new_window = None if window is None else now + timedelta(seconds=window)
    with session_factory.begin() as session:
        reopened = session.scalar(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.not_in((*CLOSING_JOB_STATES, JobStatus.deleting)),
                has_failed,
            )
            .values(
                status=case(
                    (Job.started_at.is_(None), JobStatus.queued), else_=JobStatus.in_progress
                ),
                finished_at=None,
                retained_until=None,  # open again: its retention counts from its next end
                expires_at=new_window,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        reached("retry:reopened")
        if reopened is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None or status == JobStatus.deleting:
                raise JobNotFoundError(f"No job {job_id}.")
            if status in CLOSING_JOB_STATES:
                raise JobsError("A cancelled job cannot be retried.", code="job_cancelled")
            return []
        ids = list(
            session.scalars(
                update(Item)
                .where(Item.job_id == job_id, Item.status.in_(states))
                .values(
                    status=ItemStatus.queued,
                    attempts=0,
                    transient_failures=0,
                    not_before=None,
                    error_code=None,
                    error_message=None,
                    result_text=None,
                    result_json=None,
                    tokens_out=None,
                    finished_at=None,
                    dispatched_at=now,
                )
                .returning(Item.id)
                .execution_options(synchronize_session=False)
            )
        )
        session.execute(delete(ItemPage).where(ItemPage.item_id.in_(ids)))
    with session_factory() as session:
        return list(session.scalars(select(Item.id).where(Item.id.in_(ids)).order_by(Item.seq)))
