"""Shared pieces of the transitions: what a claim hands out, what a worker reports, and
the SQL conditions every transition uses."""

from __future__ import annotations

import logging
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


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def queued_items_of(session: Session, job_id: str) -> Select[str]:
    """The ids of the job's queued items, to end them all in one UPDATE: on PostgreSQL locked
    in id order, the order a claim locks in, by a caller that holds the job's row."""
    inner = aliased(Item)
    queued = (
        select(inner.id)
        .where(inner.job_id == job_id, inner.status == ItemStatus.queued)
        .order_by(inner.id)
    )
    return queued.with_for_update() if is_postgres(session) else queued


def job_of_item_is(*states: str) -> ColumnElement[bool]:
    """The item's job is in one of ``states``."""
    return select(Job.id).where(Job.id == Item.job_id, Job.status.in_(states)).exists()
