"""An ``ItemFilter`` as SQL over ``items LEFT JOIN reviews``: shared by the page, its counts
and the bulk decision, so a bulk decision covers exactly the rows the page counted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Text, cast, exists, func, select
from sqlalchemy.orm import Session, aliased

from jobs.db import Item, Job, Review
from jobs.errors import ReviewJobNotFoundError
from jobs.review.types import UNREVIEWED, ItemFilter
from jobs.states import JobStatus


def conditions(job_id: str, flt: ItemFilter) -> list[ColumnElement[bool]]:
    """The WHERE of ``flt`` over the job's items (``items`` alone: no join needed). The text
    search is a case-insensitive substring (LIKE wildcards in it are plain characters) of the
    result text, the result JSON as text, the custom id or the input: on PostgreSQL a scan of
    the job's rows, which no index serves (bench/review_page.py measures it)."""
    where: list[ColumnElement[bool]] = [Item.job_id == job_id]
    if flt.status is not None:
        where.append(Item.status == flt.status)
    if flt.error_code is not None:
        where.append(Item.error_code == flt.error_code)
    # A review state as (NOT) EXISTS, not as a condition on the outer join's columns: for
    # ``reviews.decision IS NULL`` after the join PostgreSQL guessed one row, and sorted all the
    # job's items for every page; as an anti-join it walks the seq index and stops at the page.
    if flt.review is not None:
        where.append(in_review_state(flt.review))
    if flt.text is not None:
        where.append(searched().contains(flt.text.lower(), autoescape=True))
    return where


def searched() -> ColumnElement[str]:
    """What a text search reads of an item, lower-cased, as one string: the result text (else
    the result JSON as text: an extract's or chat's text is the JSON it parsed; an ask's is
    none), the custom id and the input. One lower() and one LIKE per row instead of four
    ILIKEs, and no JSON cast where there is text, halved the search on PostgreSQL
    (bench/review_page.py). SQLite's lower() folds ASCII letters only."""
    result = func.coalesce(Item.result_text, cast(Item.result_json, Text), "")
    whole = result + "\n" + func.coalesce(Item.custom_id, "") + "\n" + Item.source
    return func.lower(whole, type_=Text)


def in_review_state(state: str) -> ColumnElement[bool]:
    """The item is so reviewed (approved, rejected or unreviewed); it needs no join."""
    return ~_reviewed(None) if state == UNREVIEWED else _reviewed(state)


def review_state(decision: str | None) -> str:
    """The review state of an item whose review has ``decision`` (None: none, or no review),
    as ``in_review_state`` tests it in SQL."""
    return decision or UNREVIEWED


def _reviewed(decision: str | None) -> ColumnElement[bool]:
    """The item has a review with this decision (None: with any decision)."""
    mine = aliased(Review)  # the page's query joins reviews too
    decided = mine.decision.is_not(None) if decision is None else mine.decision == decision
    return exists().where(mine.item_id == Item.id, decided)


def joined(*columns: Any) -> Select[Any]:
    """``SELECT columns FROM items LEFT JOIN reviews``."""
    return select(*columns).select_from(Item).outerjoin(Review, Review.item_id == Item.id)


def live_job(session: Session, job_id: str) -> Job:
    """The job, unless it does not exist or is being deleted (gone for everyone then)."""
    job = session.get(Job, job_id)
    if job is None or job.status == JobStatus.deleting:
        raise ReviewJobNotFoundError(f"No job {job_id!r}.")
    return job
