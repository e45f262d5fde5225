"""Big jobs in a moment: one INSERT … SELECT over a recursive count, the same SQL on
PostgreSQL and SQLite, instead of a submit of tens of thousands of inputs."""

from __future__ import annotations

from sqlalchemy import Integer, String, cast, insert, literal, select

from jobs.db import Item, Job, SessionFactory, UTCDateTime, new_id, utcnow
from jobs.states import ItemStatus, JobStatus


def bulk_job(
    session_factory: SessionFactory,
    items: int,
    *,
    item_status: str = ItemStatus.queued,
    job_status: str = JobStatus.in_progress,
    model: str = "tiny-llava",
) -> str:
    """A caption job of ``items`` items, all ``item_status``, seq 0…n-1; returns its id.
    Item ids are the job's id with the seq, so they sort as nothing in particular."""
    job_id, now = new_id(), utcnow()
    with session_factory.begin() as session:
        session.add(
            Job(
                id=job_id,
                kind="caption",
                status=job_status,
                params={"batch_size": 8, "max_new_tokens": 8},
                model=model,
                started_at=None if job_status == JobStatus.queued else now,
            )
        )
    count = select(literal(0, Integer).label("n")).cte("count", recursive=True)
    count = count.union_all(select(count.c.n + 1).where(count.c.n < items - 1))
    failed = item_status == ItemStatus.failed
    finished = item_status not in (ItemStatus.queued, ItemStatus.running)
    rows = select(
        literal(job_id[:26] + "-", String) + cast(count.c.n, String),
        literal(job_id, String),
        count.c.n,
        literal("x", String),
        literal("file:///x", String),
        literal(item_status, String),
        literal(1 if failed else 0, Integer),
        literal("input_unreadable" if failed else None, String),
        literal(now, UTCDateTime()),
        literal(now if finished else None, UTCDateTime()),
    )
    columns = [
        "id",
        "job_id",
        "seq",
        "source",
        "input_uri",
        "status",
        "attempts",
        "error_code",
        "created_at",
        "finished_at",
    ]
    with session_factory.begin() as session:
        session.execute(insert(Item).from_select(columns, rows))
    return job_id
