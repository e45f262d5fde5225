"""Read side: job lookup, progress, results. What the CLI shows is what SQL users can query."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job, Review, utcnow
from jobs.delivery.state import read_output
from jobs.errors import JobNotFoundError
from jobs.lifecycle import OPEN_JOB_STATES, count_items
from jobs.paging import ItemRecord, ReviewedRecord, items_after
from jobs.shares import Turn, eta_seconds, read_turn
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus, JobStatus

# The jobs every command shows: all but those being deleted.
LISTED = Job.status != JobStatus.deleting


@dataclass(frozen=True)
class Usage:
    """Tokens the model read (prompt: text, template and image tokens) and wrote."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Items whose result is a copy of an earlier one (--reuse): no tokens of theirs above.
    reused_items: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


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
    metadata: dict[str, str] | None = None
    usage: Usage | None = None  # None: not summed (``jobs`` lists skip it: it reads every item)
    # Queued work and no live worker serving the job's model (None: not asked; see jobs.fleet).
    waiting_for_worker: bool | None = None
    priority: int = 0
    expires_at: datetime | None = None  # its completion window ends then (None: no window)
    completion_window_seconds: int | None = None
    turn: Turn | None = None  # its place in the claim order (None: not asked, or finished)
    retain_seconds: int | None = None  # kept this long after it ends (None: until deleted)
    retained_until: datetime | None = None  # deleted then (set when it ends)
    # Where its results are written when it ends (--deliver-to): jobs.delivery.state.
    output: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if state in TERMINAL_ITEM_STATES)

    @property
    def request_counts(self) -> dict[str, int]:
        """Like a hosted batch object's: completed = succeeded items."""
        return {
            "total": self.total,
            "completed": self.counts.get(ItemStatus.succeeded, 0),
            "failed": self.counts.get(ItemStatus.failed, 0),
        }

    def as_dict(self) -> dict[str, Any]:
        shown = {
            "job_id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "metadata": self.metadata,
            "counts": self.counts,
            "total": self.total,
            "request_counts": self.request_counts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "items_per_second": self.items_per_second,
            "eta_seconds": self.eta_seconds,
            "priority": self.priority,
            "completion_window_seconds": self.completion_window_seconds,
            "expires_at": _iso(self.expires_at),
            "retain_seconds": self.retain_seconds,
            "retained_until": _iso(self.retained_until),
        }
        if self.turn is not None:
            shown["turn"] = self.turn.as_dict()
        if self.usage is not None:
            shown["usage"] = self.usage.as_dict()
            shown["reused"] = self.usage.reused_items
        if self.waiting_for_worker is not None:
            shown["waiting_for_worker"] = self.waiting_for_worker
        if self.output is not None:
            shown["output"] = self.output
        return shown


def find_job(session: Session, job_ref: str) -> Job:
    """Looks a job up by id, or by a unique id prefix (ids are long to type). A job being
    deleted is not found: it is gone for every command from the moment its deletion starts."""
    job = session.get(Job, job_ref)
    if job is not None and job.status != JobStatus.deleting:
        return job
    if len(job_ref) >= 4:
        # autoescape: "%" and "_" in a prefix are characters to match, not LIKE wildcards.
        prefix = Job.id.startswith(job_ref, autoescape=True)
        matches = list(session.scalars(select(Job).where(prefix, LISTED).limit(2)))
        if len(matches) == 1:
            return matches[0]
    raise JobNotFoundError(f"No job matches {job_ref!r}.")


def read_progress(
    session: Session,
    job: Job,
    *,
    now: datetime | None = None,
    usage: bool = True,
    turn: bool = True,
) -> JobProgress:
    """Counts per item state, rate and ETA; with ``usage``, the job's token totals too (a sum
    over all its items: ``watch`` polls without it); with ``turn``, its place in the claim order
    and an ETA from the model's recent rate and the job's share of it (``jobs.shares``)."""
    now = now or utcnow()
    counts = {state.value: 0 for state in ItemStatus}
    counts.update(count_items(session, job.id))
    done = sum(n for state, n in counts.items() if state in TERMINAL_ITEM_STATES)
    remaining = counts[ItemStatus.queued] + counts[ItemStatus.running]
    rate = eta = None
    if job.started_at is not None and done:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        if elapsed > 0:
            rate = done / elapsed
            eta = remaining / rate
    place = None
    if turn and job.status in OPEN_JOB_STATES:
        place = read_turn(session, job, now=now)
        shared_eta = eta_seconds(session, job, place, remaining, now=now)
        eta = shared_eta if shared_eta is not None else eta
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
        metadata=job.job_metadata or None,
        usage=read_usage(session, job.id) if usage else None,
        priority=job.priority or 0,
        expires_at=job.expires_at,
        completion_window_seconds=job.completion_window_seconds,
        turn=place,
        retain_seconds=job.retain_seconds,
        retained_until=job.retained_until,
        output=read_output(session, job),
    )


def read_usage(session: Session, job_id: str) -> Usage:
    """The job's token totals over all its items (failed ones too: their tokens were spent),
    and how many of its results are reused copies (which spent none), in the same pass."""
    completion = func.coalesce(Item.completion_tokens, Item.tokens_out)  # older rows: tokens_out
    prompt_sum, completion_sum, reused = session.execute(
        select(
            func.sum(Item.prompt_tokens), func.sum(completion), func.count(Item.reused_from)
        ).where(Item.job_id == job_id)
    ).one()
    return Usage(int(prompt_sum or 0), int(completion_sum or 0), int(reused or 0))


def list_recent_jobs(
    session: Session,
    *,
    limit: int = 20,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[JobProgress]:
    """The latest jobs, newest first; only those named ``name`` and carrying every
    ``metadata`` pair, when given."""
    query = select(Job).where(LISTED).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if name is not None:
        query = query.where(Job.name == name)
    dialect = session.get_bind().dialect.name
    for key, value in (metadata or {}).items():
        query = query.where(_metadata_matches(dialect, key, value))
    jobs = list(session.scalars(query))
    return [read_progress(session, job, usage=False, turn=False) for job in jobs]


def _metadata_matches(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """``jobs.metadata`` has ``key`` set to ``value``; any key, passed as a bound value (never
    spliced into a JSON path)."""
    if dialect == "postgresql":  # jsonb: metadata ->> :key = :value
        matched: ColumnElement[bool] = Job.job_metadata[key].as_string() == value
        return matched
    pairs = func.json_each(Job.job_metadata).table_valued("key", "value")
    return exists(select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))


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
    after: int | None = -1
    while after is not None:
        page = items_after(
            session,
            job_id,
            after,
            limit=chunk,
            statuses=statuses,
            reviews=reviews,
            reviewed=reviewed,
        )
        yield from page.items
        after = page.next_after


def has_reviews(session: Session, job_id: str) -> bool:
    """Whether anyone reviewed an item of the job (an export of one nobody did needs no join)."""
    found = select(Review.item_id).where(Review.job_id == job_id).limit(1)
    return session.execute(found).first() is not None


def iter_sources(session: Session, job_id: str, *, chunk: int = 1000) -> Iterator[str]:
    """Each item's ``source``, in submission order, paged like ``iter_items`` (and reading
    nothing else)."""
    after: int | None = -1
    while after is not None:
        page = items_after(session, job_id, after, limit=chunk, columns=(Item.source,))
        yield from (row.source for row in page.items)
        after = page.next_after


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


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
