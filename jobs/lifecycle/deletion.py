"""Deleting a job in bounded steps: the job leaves every view in one short transaction (it
becomes ``deleting``), then its items go a batch at a time, then its row. A crash anywhere in
between leaves a ``deleting`` job that the next pass goes on with; nothing half-deleted is ever
shown, because every command treats a ``deleting`` job as gone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, select, update
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory
from jobs.errors import JobNotFinishedError, JobNotFoundError
from jobs.hooks import reached
from jobs.lifecycle.common import is_postgres
from jobs.states import TERMINAL_JOB_STATES, JobStatus

log = logging.getLogger(__name__)

# What deletion hands the blob collector, in the deleting transaction: the items about to be
# deleted (conditions on ``items``), whose stored inputs it queues.
QueueInputs = Callable[[Session, Sequence[ColumnElement[bool]]], object]


def mark_deleting(
    session_factory: SessionFactory, job_ids: Sequence[str], *, keep_inputs: bool = False
) -> None:
    """Makes every job of ``job_ids`` ``deleting`` in one transaction, or none of them: a job
    that does not exist (or is being deleted) is JobNotFoundError, one that has not ended is
    JobNotFinishedError, and then nothing is changed."""
    wanted = sorted(set(job_ids))
    with session_factory.begin() as session:
        marked = set(
            session.scalars(
                update(Job)
                .where(Job.id.in_(wanted), Job.status.in_(TERMINAL_JOB_STATES))
                # Its idempotency key is free again: a submit with it makes a new job.
                .values(status=JobStatus.deleting, keep_inputs=keep_inputs, idempotency_key=None)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        missed = [job_id for job_id in wanted if job_id not in marked]
        if missed:
            statuses = {
                job_id: status
                for job_id, status in session.execute(
                    select(Job.id, Job.status).where(Job.id.in_(missed))
                )
            }
            session.rollback()
            for job_id in missed:
                status = statuses.get(job_id)
                if status is None or status == JobStatus.deleting:
                    raise JobNotFoundError(f"No job {job_id}.")
            running = ", ".join(f"{job_id} ({statuses[job_id]})" for job_id in missed)
            raise JobNotFinishedError(
                f"Only a job that has ended can be deleted, and {running} has not: cancel it "
                "first, or wait; nothing was deleted."
            )
    log.info("jobs marked for deletion jobs=%s keep_inputs=%s", ",".join(wanted), keep_inputs)


def mark_retained(session_factory: SessionFactory, *, now: datetime, limit: int) -> int:
    """Makes up to ``limit`` ended jobs whose retention has passed ``deleting`` (their inputs
    collected); returns how many."""
    with session_factory.begin() as session:
        due = (
            select(Job.id)
            .where(Job.retained_until < now, Job.status.in_(TERMINAL_JOB_STATES))
            .order_by(Job.retained_until)
            .limit(limit)
        )
        if is_postgres(session):  # another sweeper marking the same jobs: it takes others
            due = due.with_for_update(skip_locked=True)
        # One statement: on SQLite a transaction that reads before it writes can fail.
        ids = list(
            session.scalars(
                update(Job)
                .where(Job.id.in_(due.scalar_subquery()), Job.status.in_(TERMINAL_JOB_STATES))
                .values(status=JobStatus.deleting, idempotency_key=None)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
    if ids:
        log.info("retention: %d job(s) due for deletion", len(ids))
    return len(ids)


def jobs_being_deleted(session_factory: SessionFactory, *, limit: int = 100) -> list[str]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(Job.id).where(Job.status == JobStatus.deleting).order_by(Job.id).limit(limit)
            )
        )


@dataclass(frozen=True)
class Step:
    """One transaction of a deletion: items deleted, and whether the job row went too;
    ``last_seq``: where the next step goes on from (None: from the start)."""

    items: int
    job_gone: bool
    last_seq: int | None = None


def delete_step(
    session_factory: SessionFactory,
    job_id: str,
    *,
    batch: int,
    queue_inputs: QueueInputs,
    after_seq: int | None = None,
) -> Step | None:
    """Deletes the next ``batch`` items of a ``deleting`` job (their pages go with them), or,
    when none is left, the job row. Returns None when the job is not being deleted here: gone
    already, or another process holds it (PostgreSQL: SKIP LOCKED, so two sweepers never
    wait on each other). Stored inputs of the deleted items go to ``queue_inputs`` in the same
    transaction, unless the job keeps them. ``after_seq``: the previous step's ``last_seq``,
    so the next batch is read from there, not past the dead index entries of every item
    deleted before the next vacuum (PostgreSQL)."""
    being_deleted = (Job.id == job_id, Job.status == JobStatus.deleting)
    with session_factory.begin() as session:
        if is_postgres(session):
            keep_inputs = session.scalar(
                select(Job.keep_inputs).where(*being_deleted).with_for_update(skip_locked=True)
            )
        else:  # SQLite: start with a write (the lock), or a later write may find it stale
            keep_inputs = session.scalar(
                update(Job)
                .where(*being_deleted)
                .values(keep_inputs=Job.keep_inputs)
                .returning(Job.keep_inputs)
                .execution_options(synchronize_session=False)
            )
        if keep_inputs is None:
            return None
        # Where this batch ends: the seq ``batch`` items on, or the job's last. Rows are never
        # read into this process: inputs are queued and items deleted by seq range, over the
        # (job_id, seq) index, each one statement whatever the batch.
        remaining = [Item.job_id == job_id]
        if after_seq is not None:
            remaining.append(Item.seq > after_seq)
        upto: int | None = session.scalar(_batch_end(remaining, batch))
        # Nothing is left above ``after_seq``, nor below it: every step deletes a prefix of the
        # job's items (the lowest seqs; an ended job gets no new item), whoever runs it.
        if upto is None:
            session.execute(delete(Job).where(Job.id == job_id))
            log.info("job deleted job=%s", job_id)
            return Step(items=0, job_gone=True)
        in_batch = [*remaining, Item.seq <= upto]
        if not keep_inputs:
            queue_inputs(session, in_batch)
        # Its pages go by ON DELETE CASCADE.
        deleted = session.execute(
            delete(Item).where(*in_batch).execution_options(synchronize_session=False)
        )
        reached("delete:batch")
        return Step(
            items=int(deleted.rowcount),  # type: ignore[attr-defined]
            job_gone=False,
            last_seq=upto,
        )


def _batch_end(remaining: Sequence[ColumnElement[bool]], batch: int) -> Select[Any]:
    nth = select(Item.seq).where(*remaining).order_by(Item.seq).offset(batch - 1).limit(1)
    last = select(func.max(Item.seq)).where(*remaining)
    return select(func.coalesce(nth.scalar_subquery(), last.scalar_subquery()))
