"""Finalise: a job ends when all its rows are written and nothing of it is queued or running;
never a count under a lock."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from jobs import progress
from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.delivery.outbox import queue_deliveries
from jobs.hooks import reached
from jobs.lifecycle.common import UNFINISHED_JOB_STATES, in_state, is_postgres
from jobs.sqlread import session_reader
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)


def has_item(*states: str) -> ColumnElement[bool]:
    """Whether the job (correlated) has an item in one of ``states``: one probe of the
    (job_id, status, seq) index per state, each stopping at its first entry, whatever the
    planner's statistics say (a job submitted a moment ago has none).

    Each probe is ``(SELECT seq … ORDER BY status, seq LIMIT 1) IS NOT NULL``:
    - not ``min(status)``: without statistics PostgreSQL estimated one matching row and
      aggregated every queued item (240 ms after each recorded batch of a 1M-item job);
    - not ``EXISTS``: PostgreSQL drops an EXISTS's LIMIT and may plan it as an anti-join, a
      scan that stops at its first match, which can mean reading past every other row;
    - the order is one only ``ix_items_job_status_seq`` gives, so any other plan must sort
      every row it reads and costs more. ``status = s`` would make the status redundant in the
      order, and then PostgreSQL took ``ix_items_job_seq`` as often, filtering on the status:
      a walk through the whole job for a state it does not hold. So the state is written as a
      range of one value, which the planner does not turn into an equality.
    """
    return or_(*(_probe(state) for state in states))


def _probe(state: str) -> ColumnElement[bool]:
    return in_state(Job.id, state).limit(1).scalar_subquery().is_not(None)


def has_unfinished_item() -> ColumnElement[bool]:
    return has_item(ItemStatus.queued, ItemStatus.running)


def is_fully_written() -> ColumnElement[bool]:
    """The job's rows are all written, or it is being cancelled: a producer still writing
    chunks holds a submit lease, and no chunk is written into a job that is not open (the chunk
    takes the job row first), so a cancelling job may end with the rows it has."""
    return or_(Job.submit_lease_expires_at.is_(None), Job.status == JobStatus.cancelling)


def finalise_jobs(
    session_factory: SessionFactory, job_ids: Iterable[str], *, now: datetime | None = None
) -> int:
    """Ends each job whose items are all terminal, one short transaction per job.

    Idempotent and safe beside anything: a job with a queued or running item is left alone.
    Returns how many jobs it ended.
    """
    now = now or utcnow()
    ended = 0
    for job_id in sorted(set(job_ids)):
        with session_factory.begin() as session:
            ended += finalise_in_session(session, job_id, now=now)
    return ended


def finalise_in_session(session: Session, job_id: str, *, now: datetime) -> int:
    if is_postgres(session):
        # Lock first, check in a later statement: that statement's snapshot includes whatever
        # a retry or cancel holding this lock committed (the check of a single UPDATE would not).
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    reached("finalise:locked")

    # Nothing queued or running is left (checked below), so all failed is: failed, and none
    # of the other terminal states.
    all_failed = and_(
        has_item(ItemStatus.failed),
        ~has_item(ItemStatus.succeeded, ItemStatus.cancelled, ItemStatus.expired),
    )
    ended = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(UNFINISHED_JOB_STATES),
            is_fully_written(),
            ~has_unfinished_item(),
        )
        .values(
            status=case(
                (Job.status == JobStatus.cancelling, JobStatus.cancelled),
                # Its window passed with items not started: as a hosted batch ends, whatever
                # else of it succeeded or failed (those results are kept).
                (has_item(ItemStatus.expired), JobStatus.expired),
                (all_failed, JobStatus.failed),
                else_=JobStatus.completed,
            ),
            finished_at=now,
        )
        .returning(Job.status, Job.retain_seconds, Job.notify_url, Job.output_uri)
        .execution_options(synchronize_session=False)
    ).first()
    if ended is None:
        return 0
    status, retain_seconds, notify_url, output_uri = ended
    if retain_seconds is not None:  # its retention counts from now (jobs.retention)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(retained_until=now + timedelta(seconds=retain_seconds))
            .execution_options(synchronize_session=False)
        )
    # In this transaction: a job never ends without what its end must send (jobs.delivery).
    queue_deliveries(session, job_id, status, notify_url=notify_url, output_uri=output_uri, now=now)
    log.info("job finished job=%s status=%s", job_id, status)
    return 1


def jobs_ready_to_finalise(
    session_factory: SessionFactory,
    *,
    among: Iterable[str] | None = None,
    of_items: Iterable[str] | None = None,
    limit: int = 1000,
) -> list[str]:
    """Unfinished jobs with no queued or running item (an index probe per job, no lock);
    ``among``: only these jobs; ``of_items``: only the jobs of these items."""
    params: dict[str, object] = {"limit": limit}
    if among is not None:
        params["among"] = sorted(among)
    if of_items is not None:
        params["items"] = sorted(of_items)
    query = _ready_to_finalise(among=among is not None, of_items=of_items is not None)
    with session_factory() as session:
        return list(session.scalars(query, params))


@cache
def _ready_to_finalise(*, among: bool, of_items: bool) -> Select[str]:
    # Built once: every recorded batch asks this of its items' jobs.
    query = select(Job.id).where(
        Job.status.in_(UNFINISHED_JOB_STATES), is_fully_written(), ~has_unfinished_item()
    )
    if among:
        query = query.where(Job.id.in_(bindparam("among", expanding=True)))
    if of_items:
        jobs_of = select(Item.job_id).where(Item.id.in_(bindparam("items", expanding=True)))
        query = query.where(Job.id.in_(jobs_of))
    return query.limit(bindparam("limit"))


def count_items(session: Session, job_id: str) -> dict[str, int]:
    """Items per state (only states that have some): ``jobs.progress.count_items``."""
    return progress.count_items(session_reader(session), job_id)
