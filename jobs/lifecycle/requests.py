"""Cancel and retry: the transitions a user asks for."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy import (
    String,
    and_,
    any_,
    bindparam,
    case,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from jobs.db import Item, ItemPage, Job, SessionFactory, utcnow
from jobs.errors import JobNotFoundError, JobsError
from jobs.hooks import reached
from jobs.lifecycle.common import (
    BATCH_ROWS,
    CLOSING_JOB_STATES,
    OPEN_JOB_STATES,
    first_seq_in,
    is_postgres,
    job_of_item_is,
    queued_items_of,
)
from jobs.lifecycle.finalise import finalise_in_session, finalise_jobs, has_item
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)


def cancel_job(session_factory: SessionFactory, job_id: str, *, now: datetime | None = None) -> str:
    """Cancels queued items now; running ones finish (their results are kept), and items handed
    back later end cancelled. Returns the job's status afterwards.

    In steps, each its own short transaction, so the job row is never held for longer than it
    takes to mark it: the job is marked ``cancelling`` (from then on no claim takes its items,
    and no chunk of a submit is written into it), then its queued items are cancelled in
    batches of at most ``BATCH_ROWS``, then it is finalised if nothing of it runs. Holding the
    job row through a million items' cancel took 31 s, and every claim, finalise or retry of
    the job waited on it. A cancel stopped half-way leaves a cancelling job with queued items:
    the sweeper's ``cancel_stranded`` ends them and the job. A cancel of a job already
    cancelling does the rest of the steps again."""
    now = now or utcnow()
    with session_factory.begin() as session:
        status = session.scalar(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(OPEN_JOB_STATES))
            .values(status=JobStatus.cancelling)
            .returning(Job.status)
            .execution_options(synchronize_session=False)
        )
        if status is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None or status == JobStatus.deleting:
                raise JobNotFoundError(f"No job {job_id}.")
    if status != JobStatus.cancelling:  # ended, or being deleted: nothing to cancel
        return status
    reached("cancel:marked")
    cancel_queued_in_batches(session_factory, job_id, now=now)
    finalise_jobs(session_factory, [job_id], now=now)
    with session_factory() as session:
        final = session.scalar(select(Job.status).where(Job.id == job_id))
    log.info("job cancel requested job=%s status=%s", job_id, final)
    return str(final)


def cancel_queued_in_batches(session_factory: SessionFactory, job_id: str, *, now: datetime) -> int:
    """Cancels the queued items of a closing job, a batch of at most ``BATCH_ROWS`` seqs per
    transaction, none holding the job row. Returns how many it cancelled."""
    cancelled, start = 0, 0
    while True:
        with session_factory() as session:
            # Read apart: on SQLite the transaction below must start with its write.
            found = first_seq_in(session, job_id, [ItemStatus.queued], at_least=start)
        if found is None:
            return cancelled
        start = found + BATCH_ROWS
        with session_factory.begin() as session:
            cancelled += session.execute(
                update(Item)
                .where(
                    Item.id.in_(queued_items_of(session, job_id, seqs=(found, start))),
                    Item.status == ItemStatus.queued,
                    job_of_item_is(*CLOSING_JOB_STATES),
                )
                .values(status=ItemStatus.cancelled, finished_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        reached("cancel:batch")


def cancel_queued_items(session: Session, job_id: str, *, now: datetime) -> None:
    """The rest of a cancel in the caller's transaction that has just marked the job
    ``cancelling`` (so holds its row): queued items end cancelled, then the job ends if
    nothing of it runs. In one statement: the sweeper's abandon of a submit uses it, in its
    own transaction; ``cancel_job`` works in batches instead."""
    session.execute(
        update(Item)
        .where(Item.id.in_(queued_items_of(session, job_id)), Item.status == ItemStatus.queued)
        .values(status=ItemStatus.cancelled, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    finalise_in_session(session, job_id, now=now)


RETRYABLE_ITEM_STATES = (ItemStatus.failed, ItemStatus.expired)


class _NothingRequeued(Exception):
    """Every failed item of the job failed with a code not asked for: nothing to reopen."""


def requeue_failed(
    session_factory: SessionFactory,
    job_id: str,
    *,
    only: Sequence[str] = RETRYABLE_ITEM_STATES,
    codes: Collection[str] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Puts a job's failed and expired items (``only``: those states) back in the queue with a
    fresh attempt budget and no pages; a job with a completion window gets a new one, from now.
    ``codes``: only the failed items with one of these error codes (None: every failed item).

    The items are stamped dispatched; the caller publishes them after this commits (and calls
    ``undo_dispatch`` if it cannot)."""
    try:
        return _requeue_job(session_factory, job_id, only=only, codes=codes, now=now or utcnow())
    except _NothingRequeued:  # its reopening rolled back: the job is as it was
        return []


def _requeue_job(
    session_factory: SessionFactory,
    job_id: str,
    *,
    only: Sequence[str],
    codes: Collection[str] | None,
    now: datetime,
) -> list[str]:
    states = [ItemStatus(state) for state in only]
    # The window's length is the job's setting, never changed after submit: reading it first
    # leaves the update below as conditional as before. Read apart: on SQLite the transaction
    # below must start with its write.
    with session_factory() as session:
        window = session.scalar(select(Job.completion_window_seconds).where(Job.id == job_id))
    new_window = None if window is None else now + timedelta(seconds=window)
    # One transaction, of bounded statements: the job is reopened and all its items requeued
    # at once or not at all. Reopened in one transaction and requeued in later ones, the job
    # could be finalised between two of them (nothing queued yet) and then get queued items
    # while finished, or be left half-retried by a crash, with no one to finish it. The job
    # row is held meanwhile: a doorbell's claim passes the job over (after waiting a second for
    # it, if it is the highest priority with work: claims.HELD_WAIT_MS), a finalise or cancel
    # of it waits.
    requeued: list[str] = []
    with session_factory.begin() as session:
        reopened = session.scalar(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.not_in((*CLOSING_JOB_STATES, JobStatus.deleting)),
                has_item(*states),
            )
            .values(
                status=case(
                    (Job.started_at.is_(None), JobStatus.queued), else_=JobStatus.in_progress
                ),
                finished_at=None,
                retained_until=None,  # open again: its retention counts from its next end
                expires_at=new_window,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        reached("retry:reopened")
        if reopened is None:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None or status == JobStatus.deleting:
                raise JobNotFoundError(f"No job {job_id}.")
            if status in CLOSING_JOB_STATES:
                raise JobsError("A cancelled job cannot be retried.", code="job_cancelled")
            return []
        # A batch per BATCH_ROWS seqs, from the first such item on: never one statement over
        # every item, nor a list of a million ids bound to one (65,535 is PostgreSQL's limit).
        found = first_seq_in(session, job_id, states, at_least=0)
        while found is not None:
            end = found + BATCH_ROWS
            requeued += _requeue(session, job_id, states, codes, seqs=(found, end), now=now)
            found = first_seq_in(session, job_id, states, at_least=end)
        if not requeued:  # reopened for failed items none of which was asked for
            raise _NothingRequeued()
    return requeued


def _requeue(
    session: Session,
    job_id: str,
    states: Sequence[str],
    codes: Collection[str] | None,
    *,
    seqs: tuple[int, int],
    now: datetime,
) -> list[str]:
    """Requeues the job's items in ``states`` with ``seqs[0] <= seq < seqs[1]`` (failed ones
    only with an error code in ``codes``, unless None); their ids, in seq order."""
    window = and_(
        Item.job_id == job_id,
        Item.status.in_(states),
        Item.seq >= seqs[0],
        Item.seq < seqs[1],
    )
    if codes is not None:
        window = and_(
            window, or_(Item.status != ItemStatus.failed, Item.error_code.in_(sorted(codes)))
        )
    rows = session.execute(
        update(Item)
        .where(window)
        .values(
            status=ItemStatus.queued,
            attempts=0,
            transient_failures=0,
            not_before=None,
            error_code=None,
            error_message=None,
            result_text=None,
            result_json=None,
            tokens_out=None,
            finished_at=None,
            dispatched_at=now,
        )
        .returning(Item.id, Item.seq)
        .execution_options(synchronize_session=False)
    ).all()
    ids = [row.id for row in sorted(rows, key=lambda row: row.seq)]
    # The earlier attempt's pages, found by id through their index: a join on the window was
    # planned as a scan of every page of every job, once per batch.
    if ids and is_postgres(session):
        ids_param = bindparam("ids", ids, type_=ARRAY(String))  # one parameter, not 10,000
        session.execute(delete(ItemPage).where(ItemPage.item_id == any_(ids_param)))
    elif ids:
        session.execute(delete(ItemPage).where(ItemPage.item_id.in_(ids)))
    return ids
