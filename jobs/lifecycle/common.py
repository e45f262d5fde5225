"""Shared pieces of the transitions: what a claim hands out, what a worker reports, and
the SQL conditions every transition uses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    select,
)
from sqlalchemy.orm import Session, aliased

from jobs.db import Item, Job
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)

OPEN_JOB_STATES = (JobStatus.queued, JobStatus.in_progress)
# The most item rows one statement of a retry or a cancel changes: far below the drivers'
# limits on bound parameters, and a short lock of the rows it takes.
BATCH_ROWS = 10_000
CLOSING_JOB_STATES = (JobStatus.cancelling, JobStatus.cancelled)
UNFINISHED_JOB_STATES = (JobStatus.queued, JobStatus.in_progress, JobStatus.cancelling)


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
    transient_failures: int = 0
    request: dict[str, Any] | None = None  # what the item itself asks, beyond the job's params
    reuse_key: str | None = None  # what decides its result, but the model (jobs.submit.reuse_key)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def queued_items_of(
    session: Session, job_id: str, *, seqs: tuple[int, int] | None = None
) -> Select[str]:
    """The ids of the job's queued items (``seqs``: those with ``seqs[0] <= seq < seqs[1]``), to
    end them in one UPDATE: on PostgreSQL locked in id order, the order a claim locks in."""
    inner = aliased(Item)
    queued = (
        select(inner.id)
        .where(inner.job_id == job_id, inner.status == ItemStatus.queued)
        .order_by(inner.id)
    )
    if seqs is not None:
        queued = queued.where(inner.seq >= seqs[0], inner.seq < seqs[1])
    return queued.with_for_update() if is_postgres(session) else queued


def in_state(job_id: Any, state: str) -> Select[int]:
    """The seqs of the job's items in ``state``, lowest first, read from the (job_id, status,
    seq) index whatever the planner's statistics: the state is a range of one value, so the
    order is one only that index gives (``jobs.lifecycle.finalise.has_item`` says why)."""
    return (
        select(Item.seq)
        .where(Item.job_id == job_id, Item.status >= state, Item.status <= state)
        .order_by(Item.status, Item.seq)
    )


def first_seq_in(
    session: Session, job_id: str, states: Sequence[str], *, at_least: int
) -> int | None:
    """The lowest seq, from ``at_least`` on, of the job's items in ``states``: one index
    probe per state. A batched walk over the items in those states starts each batch here,
    so a few such items among a million cost a few probes, not a walk through the rest."""
    found = [
        session.scalar(in_state(job_id, state).where(Item.seq >= at_least).limit(1))
        for state in states
    ]
    return min((seq for seq in found if seq is not None), default=None)


def job_of_item_is(*states: str) -> ColumnElement[bool]:
    """The item's job is in one of ``states``."""
    return select(Job.id).where(Job.id == Item.job_id, Job.status.in_(states)).exists()
