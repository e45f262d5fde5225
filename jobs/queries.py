"""Read side: job lookup, progress, results. What the CLI shows is what SQL users can query."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import progress
from jobs.db import Item, Job, Review
from jobs.errors import JobNotFoundError
from jobs.paging import ItemRecord, ReviewedRecord, items_after, walk
from jobs.progress import JobProgress as JobProgress  # re-exported: callers holding a session
from jobs.progress import JobRow, Usage, find_job_row
from jobs.progress import iso as _iso
from jobs.sqlread import session_reader
from jobs.states import JobStatus

# The jobs every command shows: all but those being deleted.
LISTED = Job.status != JobStatus.deleting


def job_row(job: Job) -> JobRow:
    """The columns of ``job`` that ``jobs.progress`` reads."""
    return JobRow(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        model=job.model,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        metadata=job.job_metadata,
        priority=job.priority or 0,
        expires_at=job.expires_at,
        completion_window_seconds=job.completion_window_seconds,
        retain_seconds=job.retain_seconds,
        retained_until=job.retained_until,
        output_uri=job.output_uri,
        output_format=job.output_format,
    )


def find_job(session: Session, job_ref: str) -> Job:
    """The job with this id or unique id prefix (``jobs.progress.find_job_row``), not one
    being deleted. A whole id is one read of the primary key."""
    found = session.get(Job, job_ref)
    if found is not None and found.status != JobStatus.deleting:
        return found
    found = session.get(Job, find_job_row(session_reader(session), job_ref).id)
    if found is None:  # deleted in between
        raise JobNotFoundError(f"No job matches {job_ref!r}.")
    return found


def read_progress(
    session: Session,
    job: Job,
    *,
    now: datetime | None = None,
    usage: bool = True,
    turn: bool = True,
) -> JobProgress:
    """``jobs.progress.read_progress`` in this session."""
    return progress.read_progress(
        session_reader(session), job_row(job), now=now, usage=usage, turn=turn
    )


def list_recent_jobs(
    session: Session,
    *,
    limit: int = 20,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[JobProgress]:
    """``jobs.progress.list_recent_jobs`` in this session."""
    return progress.list_recent_jobs(
        session_reader(session), limit=limit, name=name, metadata=metadata
    )


def iter_items(
    session: Session,
    job_id: str,
    *,
    statuses: Collection[str] | None = None,
    chunk: int = 1000,
    reviews: bool = False,
    reviewed: str | None = None,
) -> Iterator[ItemRecord]:
    """A job's items in submission order (only those in ``statuses``, when given), streamed:
    one query of at most ``chunk`` plain rows at a time (``jobs.paging``), so a 1M-item job
    never sits in memory, nor in the session. ``reviews``/``reviewed``: with each item's
    review, and only items so reviewed (``jobs.paging.items_after``)."""
    yield from walk(
        lambda after: items_after(
            session,
            job_id,
            after,
            limit=chunk,
            statuses=statuses,
            reviews=reviews,
            reviewed=reviewed,
        )
    )


def has_reviews(session: Session, job_id: str) -> bool:
    """Whether anyone reviewed an item of the job (an export of one nobody did needs no join)."""
    found = select(Review.item_id).where(Review.job_id == job_id).limit(1)
    return session.execute(found).first() is not None


def iter_sources(session: Session, job_id: str, *, chunk: int = 1000) -> Iterator[str]:
    """Each item's ``source``, in submission order, paged like ``iter_items`` (and reading
    nothing else)."""
    rows = walk(
        lambda after: items_after(session, job_id, after, limit=chunk, columns=(Item.source,))
    )
    yield from (row.source for row in rows)


def iter_results(
    session: Session,
    job_id: str,
    *,
    statuses: Collection[str] | None = None,
    chunk: int = 1000,
) -> Iterator[dict[str, Any]]:
    """One row per item in submission order (see ``result_row``), streamed like
    ``iter_items``."""
    for item in iter_items(session, job_id, statuses=statuses, chunk=chunk):
        yield result_row(item)


def result_row(item: ItemRecord) -> dict[str, Any]:
    """What ``results`` shows of one item (``--format jsonl``); ``usage`` is None until the
    model ran for it."""
    return {
        "item_id": item.id,
        "custom_id": item.custom_id,
        "input": item.source,
        "status": item.status,
        "result": item.result_json if item.result_json is not None else item.result_text,
        "error_code": item.error_code,
        "error_message": item.error_message,
        "finish_reason": item.finish_reason,
        "usage": item_usage(item),
        "model": item.model,  # what produced it (None: no worker claimed it yet)
        # A copy of that item's result (--reuse): the model did not run for this one.
        "reused_from": item.reused_from,
    }


# The review fields of an item nobody reviewed (an export of a job read without the join).
NO_REVIEW: dict[str, Any] = {
    "decision": None,
    "edited": None,
    "reviewer": None,
    "reviewed_at": None,
}


def review_fields(item: ReviewedRecord) -> dict[str, Any]:
    """What ``results`` shows of an item's review (``jobs.review``): its ``decision``
    (approved, rejected, or None: unreviewed), the ``edited`` result (JSON or text, as
    ``result``; None: not edited), ``reviewer`` and ``reviewed_at``. ``item`` was read with
    its review (``jobs.paging.REVIEW_COLUMNS``); one read without has ``NO_REVIEW``."""
    return {
        "decision": item.decision,
        "edited": item.edited_json if item.edited_json is not None else item.edited_text,
        "reviewer": item.reviewer,
        "reviewed_at": _iso(item.reviewed_at),
    }


def item_usage(item: ItemRecord) -> dict[str, int] | None:
    """``{prompt_tokens, completion_tokens, total_tokens}`` of one item; None when nothing was
    counted (the item never reached the model)."""
    completion = item.completion_tokens if item.completion_tokens is not None else item.tokens_out
    if item.prompt_tokens is None and completion is None:
        return None
    return Usage(item.prompt_tokens or 0, completion or 0).as_dict()


def count_jobs(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(LISTED)) or 0)
