"""A big submit's transitions: a heartbeat and each chunk of rows renew (the last chunk
clears) the job's submit lease, and a submission whose producer stopped is abandoned: the job
is cancelled.

A small job is written in one transaction and never holds a lease. A big one is written in
chunks, each committed (then published) on its own; ``jobs.submit_lease_expires_at`` says the
rows are not all written yet, so the job is not finalised meanwhile (``is_fully_written``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from jobs.db import Job, SessionFactory, utcnow
from jobs.hooks import reached
from jobs.lifecycle.common import OPEN_JOB_STATES
from jobs.lifecycle.requests import cancel_queued_items
from jobs.states import JobStatus

log = logging.getLogger(__name__)

# Logged (with the job id) when a submission is abandoned; docs/cli.md documents it.
SUBMIT_ABANDONED = "submit_abandoned"


def continue_submission(session: Session, job_id: str, *, lease_until: datetime | None) -> bool:
    """The first statement of a chunk's transaction after the first: renews the job's submit
    lease to ``lease_until`` (None: this is the last chunk, the job is fully written). Whether
    the chunk may be written: False once the job is no longer open (cancelled, or abandoned by
    the sweeper), and then nothing more is written.

    It takes the job row (PostgreSQL: until the chunk commits; SQLite: the one writer), so a
    cancel either waits for the chunk and then cancels its items too, or comes first and the
    chunk is never written: no queued item ever appears in a job that is closing."""
    renewed = session.scalar(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(OPEN_JOB_STATES),
            Job.submit_lease_expires_at.is_not(None),
        )
        .values(submit_lease_expires_at=lease_until)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return renewed is not None


def renew_submission(
    session_factory: SessionFactory, job_id: str, *, lease_until: datetime
) -> bool:
    """The submit heartbeat: extends the job's submit lease to ``lease_until`` while its
    producer stores and writes its rows, in a transaction of its own. False once there is
    nothing to keep: the job is no longer open (cancelled, abandoned) or its last chunk cleared
    the lease (on PostgreSQL a renewal that waited for that chunk's lock sees the cleared
    lease and changes nothing): ``continue_submission``'s UPDATE."""
    with session_factory.begin() as session:
        return continue_submission(session, job_id, lease_until=lease_until)


def abandon_submissions(
    session_factory: SessionFactory,
    *,
    now: datetime | None = None,
    job_id: str | None = None,
    among: Collection[str] | None = None,
) -> list[str]:
    """Cancels open jobs whose submission stopped: their submit lease ran out (the producer
    died between chunks) or, given ``job_id``, that job if its producer gives up (interrupted).
    ``among``: only these jobs are looked at (the one-process runner's own).

    A cancel like the user's: queued items end cancelled, running ones finish, the job ends
    ``cancelled``. Its lease stays set: the job holds only part of what was submitted.
    Returns the ids of the jobs it cancelled."""
    now = now or utcnow()
    stalled: ColumnElement[bool] = Job.submit_lease_expires_at.is_not(None)
    query = select(Job.id).where(Job.status.in_(OPEN_JOB_STATES), stalled)
    if job_id is None:
        stalled = Job.submit_lease_expires_at < now
        query = query.where(stalled)
        if among is not None:
            query = query.where(Job.id.in_(sorted(among)))
    else:
        query = query.where(Job.id == job_id)
    with session_factory() as session:
        candidates = list(session.scalars(query.order_by(Job.id)))
    abandoned: list[str] = []
    for candidate in candidates:
        with session_factory.begin() as session:
            marked = session.scalar(
                update(Job)
                .where(Job.id == candidate, Job.status.in_(OPEN_JOB_STATES), stalled)
                .values(status=JobStatus.cancelling)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
            if marked is None:  # a chunk renewed the lease, or a cancel came first
                continue
            reached("abandon:marked")
            cancel_queued_items(session, candidate, now=now)
        log.warning(
            "submission abandoned job=%s code=%s: its rows stopped being written; cancelled",
            candidate,
            SUBMIT_ABANDONED,
        )
        abandoned.append(candidate)
    return abandoned
