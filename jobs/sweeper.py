"""The sweeper: what makes the invariants hold after crashes and lost messages.

One pass puts expired leases back in the queue (or fails them with ``worker_lost`` once the
attempt limit is reached), re-publishes queued items whose message is missing, and finalises
jobs whose items are all terminal. Safe to run from several processes at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import DispatchError, Publisher
from jobs.errors import ItemErrorCode
from jobs.lifecycle import finalise_jobs, is_postgres
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)

_UNDISPATCHED_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class SweepReport:
    requeued: int = 0
    failed_worker_lost: int = 0
    republished: int = 0
    finalised: int = 0


def sweep(
    session_factory: SessionFactory,
    publisher: Publisher,
    *,
    max_attempts: int,
    batch_size: int,
    redispatch_after: timedelta = timedelta(seconds=120),
    now: datetime | None = None,
) -> SweepReport:
    now = now or utcnow()
    requeued, lost = sweep_expired_leases(session_factory, max_attempts=max_attempts, now=now)
    republished = republish_queued(
        session_factory,
        publisher,
        batch_size=batch_size,
        redispatch_after=redispatch_after,
        now=now,
    )
    finalised = finalise_open_jobs(session_factory, now=now)
    report = SweepReport(requeued, lost, republished, finalised)
    if report != SweepReport():
        log.info("sweep %s", report)
    return report


def sweep_expired_leases(
    session_factory: SessionFactory, *, max_attempts: int, now: datetime
) -> tuple[int, int]:
    requeued = lost = 0
    with session_factory.begin() as session:
        query = select(Item).where(Item.status == ItemStatus.running, Item.lease_expires_at < now)
        if is_postgres(session):
            query = query.with_for_update(skip_locked=True)
        for item in session.scalars(query):
            log.warning(
                "lease expired item=%s job=%s worker=%s attempts=%d",
                item.id,
                item.job_id,
                item.worker,
                item.attempts,
            )
            item.lease_token = None
            item.lease_expires_at = None
            if item.attempts >= max_attempts:
                item.status = ItemStatus.failed
                item.error_code = ItemErrorCode.worker_lost
                item.error_message = (
                    f"The worker processing this item was lost {item.attempts} times; "
                    "giving up (the input may crash the worker)."
                )
                item.finished_at = now
                lost += 1
            else:
                item.status = ItemStatus.queued
                item.dispatched_at = None
                requeued += 1
    return requeued, lost


def republish_queued(
    session_factory: SessionFactory,
    publisher: Publisher,
    *,
    batch_size: int,
    redispatch_after: timedelta,
    now: datetime,
) -> int:
    """Publishes queued items that were never dispatched, or whose message was lost.

    A message counts as lost when the broker queue is empty while items dispatched more than
    ``redispatch_after`` ago are still queued (e.g. Redis restarted without persistence).
    Duplicates are harmless: the claim lets only one through.
    """
    stale = Item.dispatched_at < now - redispatch_after
    pending = publisher.pending()
    # Not dispatched: handed back or re-queued after a lost lease (attempts > 0), or never sent
    # because the broker was down at submit. A fresh item gets a grace, so the sweeper does not
    # race a submit that is still publishing.
    grace = min(redispatch_after, _UNDISPATCHED_GRACE)
    condition: ColumnElement[bool] = and_(
        Item.dispatched_at.is_(None),
        or_(Item.attempts > 0, Item.created_at < now - grace),
    )
    if pending is None or pending == 0:
        condition = or_(condition, stale)
    with session_factory() as session:
        rows = session.execute(
            select(Item.job_id, Item.id, Item.attempts)
            .join(Job, Job.id == Item.job_id)
            .where(Item.status == ItemStatus.queued, condition)
            .where(Job.status.in_((JobStatus.queued, JobStatus.in_progress)))
            .order_by(Item.job_id, Item.seq)
        ).all()
    # An item that already lost a worker goes out alone: if it is what kills workers, it must
    # not take the innocent items of its batch down with it again (and use up their attempts).
    batches: list[tuple[str, list[str]]] = []
    fresh: dict[str, list[str]] = defaultdict(list)
    for job_id, item_id, attempts in rows:
        if attempts:
            batches.append((job_id, [item_id]))
        else:
            fresh[job_id].append(item_id)
    for job_id, item_ids in fresh.items():
        batches += [
            (job_id, item_ids[i : i + batch_size]) for i in range(0, len(item_ids), batch_size)
        ]
    published = 0
    for job_id, item_ids in batches:
        try:
            publisher.publish(job_id, item_ids)
        except DispatchError as exc:
            log.warning("republish failed job=%s: %s", job_id, exc)
            break
        mark_dispatched(session_factory, item_ids, now=now)
        published += len(item_ids)
    return published


def mark_dispatched(session_factory: SessionFactory, item_ids: list[str], *, now: datetime) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(Item)
            .where(Item.id.in_(item_ids), Item.status == ItemStatus.queued)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        )


def finalise_open_jobs(session_factory: SessionFactory, *, now: datetime) -> int:
    with session_factory.begin() as session:
        open_ids = list(
            session.scalars(
                select(Job.id).where(
                    Job.status.in_((JobStatus.queued, JobStatus.in_progress, JobStatus.cancelling))
                )
            )
        )
        return finalise_jobs(session, open_ids, now=now)
