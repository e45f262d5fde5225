"""Cancel and retry as a user asks for them: the transitions live in ``jobs.lifecycle``; retry
also dispatches what it re-queued."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from jobs.db import Job, SessionFactory, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.lifecycle import RETRYABLE_ITEM_STATES, cancel_job, requeue_failed

__all__ = ["RetryResult", "cancel_job", "retry_job"]


@dataclass(frozen=True)
class RetryResult:
    item_ids: list[str]
    dispatched: bool


def retry_job(
    session_factory: SessionFactory,
    publisher: Publisher,
    job_id: str,
    *,
    batch_size: int,
    only: Sequence[str] = RETRYABLE_ITEM_STATES,
) -> RetryResult:
    stamp = utcnow()
    ids = requeue_failed(session_factory, job_id, only=only, now=stamp)
    with session_factory() as session:
        model = session.execute(select(Job.model).where(Job.id == job_id)).scalar_one()
    dispatched = dispatch_items(
        session_factory, publisher, job_id, ids, model=model, batch_size=batch_size, stamp=stamp
    )
    return RetryResult(ids, dispatched)
