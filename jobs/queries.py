"""Read side: job lookup, progress, results. What the CLI shows is what SQL users can query."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job, utcnow
from jobs.errors import JobNotFoundError
from jobs.lifecycle import count_items
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus


@dataclass(frozen=True)
class JobProgress:
    id: str
    name: str | None
    kind: str
    status: str
    model: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    items_per_second: float | None
    eta_seconds: float | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if state in TERMINAL_ITEM_STATES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "counts": self.counts,
            "total": self.total,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "items_per_second": self.items_per_second,
            "eta_seconds": self.eta_seconds,
        }


def find_job(session: Session, job_ref: str) -> Job:
    """Looks a job up by id, or by a unique id prefix (ids are long to type)."""
    job = session.get(Job, job_ref)
    if job is not None:
        return job
    if len(job_ref) >= 4:
        # autoescape: "%" and "_" in a prefix are characters to match, not LIKE wildcards.
        prefix = Job.id.startswith(job_ref, autoescape=True)
        matches = list(session.scalars(select(Job).where(prefix).limit(2)))
        if len(matches) == 1:
            return matches[0]
    raise JobNotFoundError(f"No job matches {job_ref!r}.")


def read_progress(session: Session, job: Job, *, now: datetime | None = None) -> JobProgress:
    now = now or utcnow()
    counts = {state.value: 0 for state in ItemStatus}
    counts.update(count_items(session, job.id))
    done = sum(n for state, n in counts.items() if state in TERMINAL_ITEM_STATES)
    rate = eta = None
    if job.started_at is not None and done:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        if elapsed > 0:
            rate = done / elapsed
            remaining = counts[ItemStatus.queued] + counts[ItemStatus.running]
            eta = remaining / rate
    return JobProgress(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        model=job.model,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        counts=counts,
        items_per_second=rate,
        eta_seconds=eta,
    )


def list_recent_jobs(session: Session, *, limit: int = 20) -> list[JobProgress]:
    jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit))
    return [read_progress(session, job) for job in jobs]


def iter_results(session: Session, job_id: str, *, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """One row per item in submission order; streamed so a 100k-item job fits in memory."""
    last_seq = -1
    while True:
        rows = list(
            session.scalars(
                select(Item)
                .where(Item.job_id == job_id, Item.seq > last_seq)
                .order_by(Item.seq)
                .limit(chunk)
            )
        )
        if not rows:
            return
        for item in rows:
            yield {
                "item_id": item.id,
                "custom_id": item.custom_id,
                "input": item.source,
                "status": item.status,
                "result": item.result_json if item.result_json is not None else item.result_text,
                "error_code": item.error_code,
                "error_message": item.error_message,
            }
        last_seq = rows[-1].seq
        session.expunge_all()


def count_jobs(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
