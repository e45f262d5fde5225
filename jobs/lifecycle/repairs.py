"""The sweeper's transitions: expired leases taken back, stranded items of closing jobs
cancelled, and the right to publish items that have no message."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    String,
    case,
    cast,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.errors import ItemErrorCode
from jobs.hooks import reached
from jobs.lifecycle.claims import claimable, has_claimable, within_window
from jobs.lifecycle.common import (
    BATCH_ROWS,
    CLOSING_JOB_STATES,
    OPEN_JOB_STATES,
    is_postgres,
    job_of_item_is,
)
from jobs.lifecycle.finalise import finalise_jobs
from jobs.states import ItemStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expired:
    """Items whose lease ran out, taken back: re-queued, failed ``worker_lost``, cancelled."""

    requeued: int = 0
    failed_worker_lost: int = 0
    cancelled: int = 0


def expire_leases(
    session_factory: SessionFactory,
    *,
    max_attempts: int,
    now: datetime | None = None,
    among: Collection[str] | None = None,
) -> Expired:
    """Takes back items whose lease ran out: re-queued, or ``worker_lost`` once the attempts
    are used up, or ``cancelled`` when their job is being cancelled. ``among``: only the items
    of these jobs (the one-process runner's own)."""
    now = now or utcnow()
    closing = job_of_item_is(*CLOSING_JOB_STATES)
    gave_up = Item.attempts >= max_attempts
    lost_message = (
        literal("The worker processing this item was lost ")
        + cast(Item.attempts, String)
        + literal(" times; giving up (the input may crash the worker).")
    )
    with session_factory.begin() as session:
        inner = aliased(Item)
        expired = select(inner.id).where(
            inner.status == ItemStatus.running, inner.lease_expires_at < now
        )
        if among is not None:
            expired = expired.where(inner.job_id.in_(sorted(among)))
        if is_postgres(session):
            # A row locked by a live writer is its own business; the next pass looks again.
            expired = expired.with_for_update(skip_locked=True)
        reached("expire:begin")
        rows = session.execute(
            update(Item)
            .where(
                Item.id.in_(expired),
                Item.status == ItemStatus.running,
                Item.lease_expires_at < now,
            )
            .values(
                status=case(
                    (closing, ItemStatus.cancelled),
                    (gave_up, ItemStatus.failed),
                    else_=ItemStatus.queued,
                ),
                error_code=case(
                    (closing, null()), (gave_up, ItemErrorCode.worker_lost), else_=null()
                ),
                error_message=case((closing, null()), (gave_up, lost_message), else_=null()),
                finished_at=case((closing, now), (gave_up, now), else_=null()),
                lease_token=None,
                lease_expires_at=None,
                dispatched_at=None,
            )
            .returning(Item.id, Item.job_id, Item.status, Item.worker, Item.attempts)
            .execution_options(synchronize_session=False)
        ).all()
    for row in rows:
        log.warning(
            "lease expired item=%s job=%s worker=%s attempts=%d -> %s",
            row.id,
            row.job_id,
            row.worker,
            row.attempts,
            row.status,
        )
    finalise_jobs(session_factory, {row.job_id for row in rows}, now=now)
    return Expired(
        requeued=sum(1 for r in rows if r.status == ItemStatus.queued),
        failed_worker_lost=sum(1 for r in rows if r.status == ItemStatus.failed),
        cancelled=sum(1 for r in rows if r.status == ItemStatus.cancelled),
    )


def cancel_stranded(
    session_factory: SessionFactory,
    *,
    now: datetime | None = None,
    among: Collection[str] | None = None,
) -> int:
    """Cancels queued items of closing jobs (a repair: normally cancel and hand-back do it).
    ``among``: only the items of these jobs. At most ``BATCH_ROWS`` items per transaction: a
    cancel that stopped half-way may leave a million."""
    now = now or utcnow()
    jobs: set[str] = set()
    cancelled = 0
    while True:
        with session_factory.begin() as session:
            inner = aliased(Item)
            stranded = select(inner.id).where(
                inner.status == ItemStatus.queued,
                select(Job.id)
                .where(Job.id == inner.job_id, Job.status.in_(CLOSING_JOB_STATES))
                .exists(),
            )
            if among is not None:
                stranded = stranded.where(inner.job_id.in_(sorted(among)))
            stranded = stranded.limit(BATCH_ROWS)
            if is_postgres(session):
                stranded = stranded.with_for_update(skip_locked=True)
            rows = session.execute(
                update(Item)
                .where(Item.id.in_(stranded), Item.status == ItemStatus.queued)
                .values(status=ItemStatus.cancelled, finished_at=now)
                .returning(Item.job_id)
                .execution_options(synchronize_session=False)
            ).all()
        jobs.update(row.job_id for row in rows)
        cancelled += len(rows)
        if len(rows) < BATCH_ROWS:
            break
    finalise_jobs(session_factory, jobs, now=now)
    return cancelled


@dataclass(frozen=True)
class ToPublish:
    job_id: str
    item_id: str
    attempts: int
    seq: int


def models_with_open_jobs(
    session_factory: SessionFactory, *, among: Collection[str] | None = None
) -> list[str]:
    """The models of the jobs that may still have items to publish (one broker queue each);
    ``among``: of these jobs only."""
    query = select(Job.model).where(Job.status.in_(OPEN_JOB_STATES))
    if among is not None:
        query = query.where(Job.id.in_(sorted(among)))
    with session_factory() as session:
        return sorted(session.scalars(query.distinct()))


def take_for_publishing(
    session_factory: SessionFactory,
    *,
    model: str,
    stale_before: datetime,
    now: datetime,
    limit: int = 10_000,
    among: Collection[str] | None = None,
) -> list[ToPublish]:
    """Stamps ``dispatched_at = now`` on ``model``'s queued items that lost a worker (sent by
    name, alone: docs/design.md#I11) and have no message (re-queued after a lost lease) or
    whose message is presumed lost (dispatched before ``stale_before``), and returns them. The
    stamp is the right to publish: two sweepers never send the same items, and a sweeper that
    stamps an item must publish it. Every other queued item is claimed through a doorbell
    (``ring_for_work``). ``among``: only the items of these jobs (the one-process runner
    publishes its own job's only, so it takes no other)."""
    unsent = or_(Item.dispatched_at.is_(None), Item.dispatched_at < stale_before)
    with session_factory.begin() as session:
        inner = aliased(Item)
        candidates = (
            select(inner.id)
            .where(
                inner.status == ItemStatus.queued,
                inner.attempts > 0,
                or_(inner.dispatched_at.is_(None), inner.dispatched_at < stale_before),
                or_(inner.not_before.is_(None), inner.not_before <= now),
                select(Job.id)
                .where(
                    Job.id == inner.job_id,
                    Job.status.in_(OPEN_JOB_STATES),
                    Job.model == model,
                    within_window(Job, now),
                )
                .exists(),
            )
            .limit(limit)
        )
        if among is not None:
            candidates = candidates.where(inner.job_id.in_(sorted(among)))
        if is_postgres(session):
            candidates = candidates.with_for_update(skip_locked=True)
        rows = session.execute(
            update(Item)
            .where(Item.id.in_(candidates), Item.status == ItemStatus.queued, unsent)
            .values(dispatched_at=now)
            .returning(Item.job_id, Item.id, Item.attempts, Item.seq)
            .execution_options(synchronize_session=False)
        ).all()
        reached("republish:stamped")
    return sorted(
        (ToPublish(r.job_id, r.id, r.attempts, r.seq) for r in rows),
        key=lambda t: (t.job_id, t.seq),
    )


def models_with_work(
    session_factory: SessionFactory,
    *,
    now: datetime,
    among: Collection[str] | None = None,
) -> list[str]:
    """The models that have a claimable item (one a doorbell may take) in an open job within
    its window: the queues the sweeper makes sure have doorbells. A probe per open job."""
    query = select(Job.model).where(
        Job.status.in_(OPEN_JOB_STATES), within_window(Job, now), has_claimable(Job.id, now)
    )
    if among is not None:
        query = query.where(Job.id.in_(sorted(among)))
    with session_factory() as session:
        return sorted(set(session.scalars(query)))


def started_since(
    session_factory: SessionFactory,
    *,
    model: str,
    since: datetime,
    among: Collection[str] | None = None,
) -> bool:
    """Whether a doorbell of ``model`` has claimed a batch after ``since`` (a job's turn is
    stamped by every such claim): its doorbells are going round."""
    query = (
        select(Job.id)
        .where(Job.status.in_(OPEN_JOB_STATES), Job.model == model, Job.turn_at > since)
        .limit(1)
    )
    if among is not None:
        query = query.where(Job.id.in_(sorted(among)))
    with session_factory() as session:
        return session.scalar(query) is not None


def stamp_rung(
    session_factory: SessionFactory,
    *,
    model: str,
    now: datetime,
    limit: int = 10_000,
    among: Collection[str] | None = None,
) -> int:
    """Stamps ``dispatched_at`` on ``model``'s claimable items that have none (handed back,
    or their doorbell never went out) once the sweeper has rung for them: the stamp is what a
    re-submit reports as "dispatched" (``jobs.submit.job``). Returns how many."""
    with session_factory.begin() as session:
        inner = aliased(Item)
        open_jobs = select(Job.id).where(Job.status.in_(OPEN_JOB_STATES), Job.model == model)
        unstamped = (
            select(inner.id)
            .where(
                # Said as the partial index ix_items_unstamped says it, so it is the one read.
                inner.status == ItemStatus.queued,
                inner.dispatched_at.is_(None),
                inner.job_id.in_(open_jobs),
                claimable(inner, now),
            )
            .limit(limit)
        )
        if among is not None:
            unstamped = unstamped.where(inner.job_id.in_(sorted(among)))
        if is_postgres(session):
            unstamped = unstamped.with_for_update(skip_locked=True)
        count = session.execute(
            update(Item)
            .where(Item.id.in_(unstamped), Item.status == ItemStatus.queued)
            .values(dispatched_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        reached("ring:stamped")  # the stamped rows are still held: a doorbell may come now
    return int(count or 0)


def undo_dispatch(
    session_factory: SessionFactory, item_ids: Sequence[str], *, stamp: datetime
) -> None:
    """Clears our dispatch stamp from items whose message could not be sent, so the sweeper
    sends them at once; a stamp someone else set since is left alone."""
    if not item_ids:
        return
    with session_factory.begin() as session:
        session.execute(
            update(Item)
            .where(
                Item.id.in_(list(item_ids)),
                Item.status == ItemStatus.queued,
                Item.dispatched_at == stamp,
            )
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
