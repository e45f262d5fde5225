"""The deliveries outbox: queued with a job's end, taken under a lease, retried with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from jobs.db import Delivery, DeliveryAttempt, SessionFactory, new_id, utcnow
from jobs.hooks import reached

log = logging.getLogger(__name__)

PENDING, DELIVERED, ABANDONED = "pending", "delivered", "abandoned"

# After the first try: the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h),
# then every 10 h, until ``give_up_after`` from the job's end, whose last try is at that time.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
)
GIVE_UP_AFTER = timedelta(hours=24)
# How long a sweeper may take over one try before another may take it again (a handler's own
# timeouts are well inside it). Writing a big job's results (a million items: an export of
# some 20 s, then its upload) may take minutes: another writer taken in meanwhile would waste
# the work and could remove the first one's temporary file, so an output holds it longer.
LEASE = timedelta(minutes=5)
LEASES = {"output": timedelta(hours=1)}


def lease_for(what: str) -> timedelta:
    return LEASES.get(what, LEASE)


MAX_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class DeliveryTask:
    """One delivery, as its handler gets it."""

    id: str
    job_id: str
    what: str
    target: str
    job_status: str
    attempt: int  # 1 for the first try
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    """What one try did. ``retry``: whether trying again may help (a refused address will not
    change); ``result``: what to keep on a delivered row (where the results were written)."""

    ok: bool
    detail: str | None = None
    status_code: int | None = None
    retry: bool = True
    result: Mapping[str, Any] | None = field(default=None)


Handler = Callable[[DeliveryTask], Attempt]


def queue_deliveries(
    session: Session,
    job_id: str,
    job_status: str,
    *,
    notify_url: str | None,
    output_uri: str | None,
    now: datetime,
) -> int:
    """Writes what the job's end sends, in the caller's transaction (the one ending it)."""
    rows = [
        {"what": what, "target": target}
        for what, target in (("webhook", notify_url), ("output", output_uri))
        if target
    ]
    if not rows:
        return 0
    session.execute(
        insert(Delivery),
        [
            {
                "id": new_id(),
                "job_id": job_id,
                "job_status": job_status,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                **row,
            }
            for row in rows
        ],
    )
    return len(rows)


def next_attempt(created_at: datetime, attempts: int, now: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed tries, or None: give up."""
    deadline = created_at + GIVE_UP_AFTER
    if now >= deadline:
        return None
    delay = RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]
    return min(now + delay, deadline)


def deliver_due(
    session_factory: SessionFactory,
    handlers: Mapping[str, Handler],
    *,
    now: datetime | None = None,
    among: Collection[str] | None = None,
    limit: int = 100,
    seconds: float | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """Tries each due delivery once (of the jobs ``among``, if given), for at most ``seconds``
    (then the rest waits for the next pass). Safe beside other sweepers: a row is taken by one.
    Returns how many were delivered."""
    started = time.monotonic()
    now = now or clock()
    query = (
        select(Delivery.id, Delivery.what)
        .where(Delivery.status == PENDING, Delivery.next_attempt_at <= now)
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    if among is not None:
        query = query.where(Delivery.job_id.in_(sorted(among)))
    with session_factory() as session:
        due = [(row[0], row[1]) for row in session.execute(query)]
    delivered = 0
    for delivery_id, what in due:
        if seconds is not None and time.monotonic() - started > seconds:
            break
        task = _take(session_factory, delivery_id, now, lease_for(what))
        if task is None:
            continue  # another sweeper took it
        reached("delivery:taken")
        handler = handlers.get(task.what)
        if handler is None:
            # A sweeper of an older version: leave it to one that knows the kind.
            attempt = Attempt(ok=False, detail=f"no handler for {task.what!r} here")
        else:
            try:
                attempt = handler(task)
            except Exception as exc:  # a handler's bug must not stop the other deliveries
                log.exception("delivery failed delivery=%s", task.id)
                attempt = Attempt(ok=False, detail=f"{type(exc).__name__}: {exc}")
        delivered += _record(session_factory, task, attempt, clock())
    return delivered


def _take(
    session_factory: SessionFactory, delivery_id: str, now: datetime, lease: timedelta = LEASE
) -> DeliveryTask | None:
    with session_factory.begin() as session:
        row = session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.status == PENDING,
                Delivery.next_attempt_at <= now,
            )
            .values(attempts=Delivery.attempts + 1, next_attempt_at=now + lease)
            .returning(
                Delivery.job_id,
                Delivery.what,
                Delivery.target,
                Delivery.job_status,
                Delivery.attempts,
                Delivery.created_at,
            )
            .execution_options(synchronize_session=False)
        ).first()
    if row is None:
        return None
    return DeliveryTask(delivery_id, row[0], row[1], row[2], row[3], row[4], row[5])


def _record(
    session_factory: SessionFactory, task: DeliveryTask, attempt: Attempt, now: datetime
) -> int:
    detail = None if attempt.detail is None else attempt.detail[:MAX_DETAIL_CHARS]
    if attempt.ok:
        values: dict[str, Any] = {
            "status": DELIVERED,
            "finished_at": now,
            "result": dict(attempt.result) if attempt.result is not None else None,
            "last_error": None,
        }
    else:
        retry_at = next_attempt(task.created_at, task.attempt, now) if attempt.retry else None
        values = {"last_error": detail}
        if retry_at is None:
            values |= {"status": ABANDONED, "finished_at": now}
        else:
            values["next_attempt_at"] = retry_at
    with session_factory.begin() as session:
        # Only while this try still holds the row: one whose lease ran out was taken again.
        held = session.execute(
            update(Delivery)
            .where(
                Delivery.id == task.id,
                Delivery.status == PENDING,
                Delivery.attempts == task.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if held or session.scalar(select(Delivery.id).where(Delivery.id == task.id)):
            # (A job deleted meanwhile took its deliveries with it: nothing to note.)
            session.add(
                DeliveryAttempt(
                    delivery_id=task.id,
                    attempted_at=now,
                    ok=attempt.ok,
                    status_code=attempt.status_code,
                    detail=detail,
                )
            )
    if not attempt.ok:
        log.warning("delivery try failed delivery=%s job=%s: %s", task.id, task.job_id, detail)
    return 1 if attempt.ok and held else 0
