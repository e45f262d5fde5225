"""The life of an item in the database: claim with a lease, record fenced by the lease token,
hand back, and finalise the job. Workers call these; the sweeper repairs what they leave.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.db import Item, ItemPage, Job, SessionFactory, new_id, utcnow
from jobs.extraction import PageOutcome
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus

log = logging.getLogger(__name__)

_CLOSED_JOB_STATES = (JobStatus.cancelling, JobStatus.cancelled)


@dataclass(frozen=True)
class ClaimedItem:
    id: str
    job_id: str
    kind: str
    source: str
    input_uri: str
    prompt: str
    attempts: int
    lease_token: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemOutcome:
    """What a worker learned about one claimed item. No error code means success."""

    item_id: str
    lease_token: str
    text: str | None = None
    json: Any = None
    tokens_out: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    pages: tuple[PageOutcome, ...] = ()  # documents: one per rendered page


def claim_items(
    session_factory: SessionFactory,
    item_ids: Sequence[str],
    *,
    worker: str,
    lease_seconds: int,
    now: datetime | None = None,
) -> list[ClaimedItem]:
    """Moves still-queued items to running under one fresh lease token and returns them.

    A duplicated or redelivered message finds nothing queued and gets an empty list.
    """
    now = now or utcnow()
    token = new_id()
    with session_factory.begin() as session:
        candidates = (
            select(Item.id)
            .join(Job, Job.id == Item.job_id)
            .where(Item.id.in_(item_ids), Item.status == ItemStatus.queued)
            .where(Job.status.not_in(_CLOSED_JOB_STATES))
        )
        if is_postgres(session):
            candidates = candidates.with_for_update(of=Item, skip_locked=True)
        ids = list(session.scalars(candidates))
        if not ids:
            return []
        # The status guard repeats the check: on SQLite there is no row lock, and the
        # conditional UPDATE is what makes a concurrent claim lose cleanly.
        session.execute(
            update(Item)
            .where(Item.id.in_(ids), Item.status == ItemStatus.queued)
            .values(
                status=ItemStatus.running,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Item.attempts + 1,
                worker=worker,
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(Item, Job.prompt, Job.params, Job.kind)
            .join(Job, Job.id == Item.job_id)
            .where(Item.id.in_(ids), Item.lease_token == token)
            .order_by(Item.seq)
        ).all()
        job_ids = {item.job_id for item, _, _, _ in rows}
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.queued)
            .values(status=JobStatus.in_progress, started_at=now)
            .execution_options(synchronize_session=False)
        )
        return [
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
            )
            for item, job_prompt, job_params, kind in rows
        ]


def record_results(
    session_factory: SessionFactory, outcomes: Sequence[ItemOutcome], *, now: datetime | None = None
) -> int:
    """Writes outcomes in one transaction, each only under its own lease token.

    Returns how many were written; a worker that lost its lease writes nothing.
    """
    now = now or utcnow()
    written = 0
    with session_factory.begin() as session:
        job_ids = _job_ids_of(session, [o.item_id for o in outcomes])
        _lock_jobs(session, job_ids)
        for outcome in outcomes:
            failed = outcome.error_code is not None
            result = session.execute(
                update(Item)
                .where(
                    Item.id == outcome.item_id,
                    Item.lease_token == outcome.lease_token,
                    Item.status == ItemStatus.running,
                )
                .values(
                    status=ItemStatus.failed if failed else ItemStatus.succeeded,
                    result_text=outcome.text,
                    result_json=outcome.json,
                    tokens_out=outcome.tokens_out,
                    error_code=outcome.error_code,
                    error_message=outcome.error_message,
                    finished_at=now,
                    lease_token=None,
                    lease_expires_at=None,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                written += 1
                session.add_all(_page_rows(outcome))
            else:
                log.warning("lease lost, result dropped item=%s", outcome.item_id)
        finalise_jobs(session, job_ids, now=now)
    return written


def _page_rows(outcome: ItemOutcome) -> list[ItemPage]:
    return [
        ItemPage(
            item_id=outcome.item_id,
            page_number=page.number,
            result_text=page.text,
            result_json=page.json,
            error_code=page.error_code,
            error_message=page.error_message,
            tokens_out=page.tokens_out,
        )
        for page in outcome.pages
    ]


def renew_lease(
    session_factory: SessionFactory,
    lease_token: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> int:
    """Extends the lease of items still running under ``lease_token``; returns how many.

    A worker that is alive keeps its batch, however long generation takes; a paused or dead
    one stops renewing and loses it.
    """
    now = now or utcnow()
    with session_factory.begin() as session:
        result = session.execute(
            update(Item)
            .where(Item.lease_token == lease_token, Item.status == ItemStatus.running)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def release_items(
    session_factory: SessionFactory,
    claimed: Iterable[ClaimedItem],
    *,
    now: datetime | None = None,
) -> int:
    """Hands claimed items back to the queue (shutdown, transient failure) under their lease.

    The attempt is not refunded: an item that keeps getting handed back still reaches the limit.
    """
    now = now or utcnow()
    released = 0
    with session_factory.begin() as session:
        for item in claimed:
            result = session.execute(
                update(Item)
                .where(
                    Item.id == item.id,
                    Item.lease_token == item.lease_token,
                    Item.status == ItemStatus.running,
                )
                .values(
                    status=ItemStatus.queued,
                    lease_token=None,
                    lease_expires_at=None,
                    dispatched_at=None,
                )
                .execution_options(synchronize_session=False)
            )
            released += result.rowcount  # type: ignore[attr-defined]
    return released


def finalise_jobs(session: Session, job_ids: Iterable[str], *, now: datetime) -> int:
    """Ends each job whose items are all terminal, inside the caller's transaction.

    Returns how many jobs it ended.
    """
    ended = 0
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL_JOB_STATES:
            continue
        counts = count_items(session, job_id)
        if counts.get(ItemStatus.queued, 0) or counts.get(ItemStatus.running, 0):
            continue
        total = sum(counts.values())
        if job.status == JobStatus.cancelling:
            job.status = JobStatus.cancelled
        elif total and counts.get(ItemStatus.failed, 0) == total:
            job.status = JobStatus.failed
        else:
            job.status = JobStatus.completed
        job.finished_at = now
        ended += 1
        log.info("job finished job=%s status=%s counts=%s", job_id, job.status, counts)
    return ended


def count_items(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all()
    return {str(status): int(n) for status, n in rows}


def _job_ids_of(session: Session, item_ids: Sequence[str]) -> list[str]:
    if not item_ids:
        return []
    return sorted(set(session.scalars(select(Item.job_id).where(Item.id.in_(item_ids)))))


def _lock_jobs(session: Session, job_ids: Sequence[str]) -> None:
    # Serialises finalisation per job on PostgreSQL: two workers finishing the last items of
    # one job at once would otherwise each see the other's items still running.
    if job_ids and is_postgres(session):
        session.execute(select(Job.id).where(Job.id.in_(job_ids)).with_for_update())


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
