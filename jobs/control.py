"""Cancel and retry as a user asks for them: the transitions live in ``jobs.lifecycle``; retry
also dispatches what it re-queued, and says which failed items it left alone."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RETRYABLE_ERROR_CODES
from jobs.lifecycle import RETRYABLE_ITEM_STATES, cancel_job, requeue_failed
from jobs.states import ItemStatus

__all__ = ["RetryResult", "cancel_job", "describe_retry", "retry_batch_size", "retry_job"]


@dataclass(frozen=True)
class RetryResult:
    item_ids: list[str]
    dispatched: bool
    # The failed items left failed, by error code: their failure would repeat.
    skipped: dict[str, int] = field(default_factory=dict)


def retry_job(
    session_factory: SessionFactory,
    publisher: Publisher,
    job_id: str,
    *,
    batch_size: int,
    only: Sequence[str] = RETRYABLE_ITEM_STATES,
    codes: Collection[str] | None = RETRYABLE_ERROR_CODES,
) -> RetryResult:
    """Re-queues the job's items in the states ``only``; of the failed ones, those with an
    error code in ``codes`` (by default the ones that can succeed again; None: every one)."""
    stamp = utcnow()
    ids = requeue_failed(session_factory, job_id, only=only, codes=codes, now=stamp)
    with session_factory() as session:
        model = session.execute(select(Job.model).where(Job.id == job_id)).scalar_one()
    asked_for_failed = codes is not None and ItemStatus.failed in only
    skipped = _failed_by_code(session_factory, job_id) if asked_for_failed else {}
    dispatched = dispatch_items(
        session_factory, publisher, job_id, ids, model=model, batch_size=batch_size, stamp=stamp
    )
    return RetryResult(ids, dispatched, skipped)


def retry_batch_size(job: Job, default: int) -> int:
    """The batch size a retry dispatches with: the job's own, else the deployment's."""
    return int(job.params.get("batch_size") or default)


def describe_retry(job_id: str, retried: RetryResult, states: Sequence[str]) -> list[str]:
    """What a retry says it did, in the words the CLI and the review page both show."""
    lines = [
        f"job {job_id}: {len(retried.item_ids)} {' or '.join(states)} item(s) re-queued"
        + ("" if retried.dispatched else " (broker unreachable: the sweeper will dispatch)")
    ]
    if retried.skipped:
        codes = ", ".join(f"{code} {n}" for code, n in retried.skipped.items())
        lines.append(
            f"job {job_id}: {sum(retried.skipped.values())} failed item(s) skipped, their "
            f"failure would repeat ({codes}); --all re-queues them too"
        )
    return lines


def _failed_by_code(session_factory: SessionFactory, job_id: str) -> dict[str, int]:
    with session_factory() as session:
        rows = session.execute(
            select(Item.error_code, func.count())
            .where(Item.job_id == job_id, Item.status == ItemStatus.failed)
            .group_by(Item.error_code)
            .order_by(func.count().desc(), Item.error_code)
        ).all()
    return {str(code): int(n) for code, n in rows}
