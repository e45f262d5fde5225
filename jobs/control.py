"""Cancel and retry: state changes a user asks for, kept consistent with the lease protocol."""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.errors import JobsError
from jobs.lifecycle import finalise_jobs
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus

log = logging.getLogger(__name__)


def cancel_job(session_factory: SessionFactory, job_id: str) -> str:
    """Cancels queued items now; running ones finish (their results are kept).

    Workers check the job between batches. Returns the job's new status.
    """
    now = utcnow()
    with session_factory.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobsError(f"No job {job_id}.", code="job_not_found")
        if job.status in TERMINAL_JOB_STATES:
            return job.status
        job.status = JobStatus.cancelling
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status == ItemStatus.queued)
            .values(status=ItemStatus.cancelled, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        finalise_jobs(session, [job_id], now=now)
        log.info("job cancel requested job=%s status=%s", job_id, job.status)
        return job.status


def requeue_failed(session_factory: SessionFactory, job_id: str) -> list[str]:
    """Puts a job's failed items back in the queue with a fresh attempt budget."""
    with session_factory.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobsError(f"No job {job_id}.", code="job_not_found")
        if job.status in (JobStatus.cancelling, JobStatus.cancelled):
            raise JobsError("A cancelled job cannot be retried.", code="job_cancelled")
        ids = list(
            session.scalars(
                select(Item.id)
                .where(Item.job_id == job_id, Item.status == ItemStatus.failed)
                .order_by(Item.seq)
            )
        )
        if not ids:
            return []
        session.execute(
            update(Item)
            .where(Item.id.in_(ids))
            .values(
                status=ItemStatus.queued,
                attempts=0,
                error_code=None,
                error_message=None,
                finished_at=None,
                dispatched_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        job.status = JobStatus.in_progress if job.started_at else JobStatus.queued
        job.finished_at = None
        return ids
