"""Claim, heartbeat and hand-back: the transitions a worker makes on its own batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    case,
    null,
    select,
    update,
)
from sqlalchemy.orm import aliased

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.fleet import Serving
from jobs.hooks import reached
from jobs.lifecycle.common import (
    CLOSING_JOB_STATES,
    OPEN_JOB_STATES,
    ClaimedItem,
    is_available,
    is_postgres,
    job_of_item_is,
)
from jobs.lifecycle.finalise import finalise_jobs
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)


def claim_items(
    session_factory: SessionFactory,
    item_ids: Sequence[str],
    *,
    worker: str,
    lease_seconds: int,
    serving: Serving | None = None,
    now: datetime | None = None,
) -> list[ClaimedItem]:
    """Moves still-queued items to running under one fresh lease token and returns them.

    A duplicated or redelivered message finds nothing queued and gets an empty list. Rows that a
    producer, a sweeper or another claim holds locked are waited for (bounded by the lock
    timeout), never skipped: skipping them would drop the message's items until a redispatch.
    With ``serving`` only items of jobs for that model are claimed (a message that reached the
    wrong queue claims nothing; the sweeper re-publishes to the right one), and each claimed item
    records the model, revision and quantisation that will produce it.
    """
    now = now or utcnow()
    token = new_id()
    routed: dict[str, object] = {}
    if serving is not None:
        routed = {
            "model": serving.model,
            "model_revision": serving.revision,
            "quantization": serving.quantization,
        }
    with session_factory.begin() as session:
        reached("claim:begin")
        inner = aliased(Item)
        target = (
            select(inner.id)
            .where(inner.id.in_(list(item_ids)), inner.status == ItemStatus.queued)
            .order_by(inner.id)  # one lock order for every claimer: no deadlock
        )
        if is_postgres(session):
            target = target.with_for_update()
        session.execute(
            update(Item)
            .where(
                Item.id.in_(target),
                Item.status == ItemStatus.queued,
                is_available(now),
                job_of_item_is(*OPEN_JOB_STATES, model=None if serving is None else serving.model),
            )
            .values(
                status=ItemStatus.running,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Item.attempts + 1,
                worker=worker,
                started_at=now,
                not_before=None,
                **routed,
            )
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(Item, Job.prompt, Job.params, Job.kind)
            .join(Job, Job.id == Item.job_id)
            .where(Item.lease_token == token)
            .order_by(Item.seq)
        ).all()
    claimed = [
        ClaimedItem(
            id=item.id,
            job_id=item.job_id,
            kind=kind,
            source=item.source,
            input_uri=item.input_uri,
            prompt=item.prompt if item.prompt is not None else (job_prompt or ""),
            attempts=item.attempts,
            lease_token=token,
            params=dict(job_params or {}),
            transient_failures=item.transient_failures,
            request=item.request,
        )
        for item, job_prompt, job_params, kind in rows
    ]
    if claimed:
        _start_jobs(session_factory, {c.job_id for c in claimed}, now=now)
    return claimed


def lost_a_worker(session_factory: SessionFactory, item_ids: Sequence[str]) -> bool:
    """Whether any of these items, still queued, has been claimed before: its worker was lost
    (a hand-back refunds its attempt and a retry starts again from 0). Such an item may be what
    kills workers, so a worker runs its message alone (``workers.isolation``). A read: no lock."""
    with session_factory() as session:
        found = session.scalar(
            select(Item.id)
            .where(
                Item.id.in_(list(item_ids)),
                Item.status == ItemStatus.queued,
                Item.attempts > 0,
            )
            .limit(1)
        )
    return found is not None


def _start_jobs(session_factory: SessionFactory, job_ids: Iterable[str], *, now: datetime) -> None:
    # Its own transaction: a claim holding item locks never waits for a job row (cancel takes
    # the job row first, then items; the two orders would deadlock).
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(sorted(job_ids)), Job.status == JobStatus.queued)
            .values(status=JobStatus.in_progress, started_at=now)
            .execution_options(synchronize_session=False)
        )


def renew_lease(
    session_factory: SessionFactory,
    lease_token: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> int:
    """Extends the lease of items still running under ``lease_token``; returns how many."""
    now = now or utcnow()
    with session_factory.begin() as session:
        result = session.execute(
            update(Item)
            .where(Item.lease_token == lease_token, Item.status == ItemStatus.running)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def _back_to_the_queue(closing: ColumnElement[bool], now: datetime) -> dict[str, Any]:
    """A hand-back: running → queued with the attempt refunded (the item did nothing wrong),
    or ``cancelled`` when its job is closing; no lease, no message."""
    return {
        "status": case((closing, ItemStatus.cancelled), else_=ItemStatus.queued),
        "finished_at": case((closing, now), else_=null()),
        "lease_token": None,
        "lease_expires_at": None,
        "dispatched_at": None,
        "attempts": Item.attempts - 1,
    }


def release_items(
    session_factory: SessionFactory,
    claimed: Iterable[ClaimedItem],
    *,
    retry_base_seconds: float = 5,
    retry_max_seconds: float = 300,
    now: datetime | None = None,
) -> int:
    """Hands items back after a transient failure (storage down, throttled), under their lease.

    The item waits ``base * 2^n`` seconds (capped) before it can be claimed again, and the
    attempt is refunded: a blip is not the item's fault. ``transient_failures`` counts the
    hand-backs; the worker fails the item once it reaches its limit. An item of a job being
    cancelled ends ``cancelled`` instead.
    """
    now = now or utcnow()
    released = 0
    job_ids: set[str] = set()
    closing = job_of_item_is(*CLOSING_JOB_STATES)
    with session_factory.begin() as session:
        for item in claimed:
            delay = min(
                retry_base_seconds * 2 ** min(item.transient_failures, 30), retry_max_seconds
            )
            row = session.execute(
                update(Item)
                .where(
                    Item.id == item.id,
                    Item.lease_token == item.lease_token,
                    Item.status == ItemStatus.running,
                )
                .values(
                    **_back_to_the_queue(closing, now),
                    transient_failures=Item.transient_failures + 1,
                    not_before=now + timedelta(seconds=delay),
                )
                .returning(Item.job_id)
                .execution_options(synchronize_session=False)
            ).first()
            if row is not None:
                released += 1
                job_ids.add(row.job_id)
    finalise_jobs(session_factory, job_ids, now=now)
    return released


def hand_back_claims(
    session_factory: SessionFactory, job_id: str, *, worker: str, now: datetime | None = None
) -> int:
    """Hands back at once what ``worker`` still holds of a job it stops working on (an
    interrupted ``llava-batch run``): running → queued with the attempt refunded and no backoff
    (the item did nothing wrong), or ``cancelled`` when the job is being cancelled.

    Guarded by state and worker: an item whose lease another worker has taken since (the
    sweeper re-queued it, another claim stamped its own name) is not touched. Returns how many.
    """
    now = now or utcnow()
    closing = job_of_item_is(*CLOSING_JOB_STATES)
    with session_factory.begin() as session:
        rows = session.execute(
            update(Item)
            .where(
                Item.job_id == job_id,
                Item.status == ItemStatus.running,
                Item.worker == worker,
            )
            .values(**_back_to_the_queue(closing, now))
            .returning(Item.id)
            .execution_options(synchronize_session=False)
        ).all()
    if rows:
        log.info("handed back job=%s worker=%s items=%d", job_id, worker, len(rows))
        finalise_jobs(session_factory, {job_id}, now=now)
    return len(rows)
