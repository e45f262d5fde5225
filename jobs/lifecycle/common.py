"""Shared pieces of the transitions: what a claim hands out, what a worker reports, and
the SQL conditions every transition uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    select,
)
from sqlalchemy.orm import Session

from jobs.db import Item, Job
from jobs.states import JobStatus

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


def job_of_item_is(*states: str) -> ColumnElement[bool]:
    """The item's job is in one of ``states``."""
    return select(Job.id).where(Job.id == Item.job_id, Job.status.in_(states)).exists()
