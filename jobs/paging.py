"""A job's items page by page in submission order, each page one bounded range of the
(job_id, seq) index, whatever the planner knows of the table.

A page is ``after < seq <= after + limit``, not ``seq > after ORDER BY seq LIMIT limit``: with
no statistics yet (a job submitted a moment ago) PostgreSQL guessed that a few rows matched
the open-ended form and read every remaining row of the job into a sort for each page, so an
export of a 1M-item job read it about 500 times over. A closed range reads at most its own
rows whatever plan is chosen. A job's seqs are 0…n-1 (``jobs.submit``), so a window of
``limit`` seqs holds ``limit`` items until the last; a gap, should one ever appear, costs one
open-ended probe and is jumped over.

A page holds plain rows of the columns an export reads (``ItemRecord``), not ORM objects:
building a million of those, and letting each go from the session, took longer than the
rest of an export.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.db import Item, Review, among
from jobs.review.filters import in_review_state


class ItemRecord(Protocol):
    """What results read of an item: an ``Item`` or a row of ``RECORD_COLUMNS``."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def custom_id(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def result_text(self) -> str | None: ...
    @property
    def result_json(self) -> Any | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def model_revision(self) -> str | None: ...
    @property
    def reused_from(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...
    @property
    def tokens_out(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...


class ReviewedRecord(ItemRecord, Protocol):
    """An item read with its review (``REVIEW_COLUMNS``; None where there is none)."""

    @property
    def decision(self) -> str | None: ...
    @property
    def edited_text(self) -> str | None: ...
    @property
    def edited_json(self) -> Any | None: ...
    @property
    def reviewer(self) -> str | None: ...
    @property
    def reviewed_at(self) -> datetime | None: ...


RECORD_COLUMNS = (
    Item.id,
    Item.seq,
    Item.custom_id,
    Item.source,
    Item.status,
    Item.result_text,
    Item.result_json,
    Item.error_code,
    Item.error_message,
    Item.finish_reason,
    Item.model,
    Item.model_revision,
    Item.reused_from,
    Item.prompt_tokens,
    Item.completion_tokens,
    Item.tokens_out,
    Item.created_at,
    Item.finished_at,
)


# What an export reads of an item's review (``jobs.review``), by one query per page; a job
# nobody reviewed is paged without it, and its rows have none of these.
REVIEW_COLUMNS = (
    Review.decision,
    Review.edited_text,
    Review.edited_json,
    Review.reviewer,
    Review.decided_at.label("reviewed_at"),
)


@dataclass
class Page:
    items: Sequence[ItemRecord]
    # Where the next page starts (its ``after``); None: no item of the job lies beyond.
    next_after: int | None


def items_after(
    session: Session,
    job_id: str,
    after: int,
    *,
    limit: int,
    statuses: Collection[str] | None = None,
    columns: Sequence[Any] = RECORD_COLUMNS,
    reviews: bool = False,
    reviewed: str | None = None,
) -> Page:
    """The job's items with ``after < seq <= after + limit`` (only those in ``statuses``, when
    given), in seq order. Without ``statuses``, an empty page means the job has no item beyond
    ``after``; with them, go on from ``next_after`` until it is None. ``columns``: fewer than an
    export reads, for a pass that needs only those (its rows are then not ``ItemRecord``s).
    ``reviews``: each row carries its review too (``REVIEW_COLUMNS``, None where there is none),
    read by the page's item ids (``_with_reviews``); ``reviewed``: only items so reviewed
    (approved, rejected or unreviewed), by the review page's own test of it
    (``jobs.review.filters``)."""
    filtered = bool(statuses) or reviewed is not None
    while True:
        end = after + limit
        query = select(*columns).where(Item.job_id == job_id, Item.seq > after, Item.seq <= end)
        if statuses:
            query = query.where(Item.status.in_(list(statuses)))
        if reviewed is not None:
            query = query.where(in_review_state(reviewed))
        items = session.execute(query.order_by(Item.seq)).all()
        if reviews and items:
            items = _with_reviews(session, items)
        if filtered:
            if items or _any_between(session, job_id, after, end):
                return Page(items, end)
        elif len(items) == limit:
            return Page(items, end)
        # A window not full: the end of the job, or a gap in its seqs.
        following = _first_after(session, job_id, end)
        if items or following is None:
            return Page(items, None if following is None else end)
        after = following - 1


def _with_reviews(session: Session, items: Sequence[Any]) -> list[Any]:
    """``items`` (rows with an ``id``), each with its review's ``REVIEW_COLUMNS`` after its own
    (None where it has none), read by the items' ids: the reviews' primary key. Not a LEFT JOIN
    of the page: PostgreSQL hashed the whole job's reviews for each page of it (a full read of
    ``reviews`` per 1,000 items), which made a 1M-item export with 10 % reviewed 2.7 times as
    slow as one with none (bench/review_page.py)."""
    wanted = select(Review.item_id, *REVIEW_COLUMNS).where(
        among(session, Review.item_id, [item.id for item in items])
    )
    found = {row[0]: tuple(row[1:]) for row in session.execute(wanted)}
    none = (None,) * len(REVIEW_COLUMNS)
    record = _reviewed_record(tuple(items[0]._fields))
    return [record(*item, *found.get(item.id, none)) for item in items]


@cache
def _reviewed_record(fields: tuple[str, ...]) -> Any:
    """A row type of ``fields`` and the review's: attributes by name, as a ``Row``'s."""
    return namedtuple("ReviewedRow", (*fields, *(c.key for c in REVIEW_COLUMNS)))


def _first_after(session: Session, job_id: str, seq: int) -> int | None:
    probe = select(Item.seq).where(Item.job_id == job_id, Item.seq > seq).order_by(Item.seq)
    return session.scalar(probe.limit(1))


def _any_between(session: Session, job_id: str, after: int, end: int) -> bool:
    probe = select(Item.seq).where(Item.job_id == job_id, Item.seq > after, Item.seq <= end)
    return session.scalar(probe.limit(1)) is not None


def walk(read: Callable[[int], Page]) -> Iterator[ItemRecord]:
    """Each row of a job's pages, in order: ``read(after)`` reads one (``items_after`` with the
    caller's session and options), from after -1 and then from each ``next_after`` until it is
    None. The caller's ``read`` decides whether a session stays open from page to page."""
    after: int | None = -1
    while after is not None:
        page = read(after)
        yield from page.items
        after = page.next_after
