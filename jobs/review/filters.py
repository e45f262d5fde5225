"""An ``ItemFilter`` as SQL over ``items LEFT JOIN reviews``: shared by the page, its counts
and the bulk decision, so a bulk decision covers exactly the rows the page counted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Text, cast, or_, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job, Review
from jobs.errors import ReviewJobNotFoundError
from jobs.review.types import UNREVIEWED, ItemFilter
from jobs.states import JobStatus


def conditions(job_id: str, flt: ItemFilter) -> list[ColumnElement[bool]]:
    """The WHERE of ``flt`` over the job's items (the reviews' columns need the outer join:
    ``joined``). The text search is a case-insensitive substring (LIKE wildcards in it are
    plain characters) of the result text, the result JSON as text, the custom id or the input:
    on PostgreSQL an ILIKE over the job's rows, which no index serves (bench/review_page.py
    measures it)."""
    where: list[ColumnElement[bool]] = [Item.job_id == job_id]
    if flt.status is not None:
        where.append(Item.status == flt.status)
    if flt.error_code is not None:
        where.append(Item.error_code == flt.error_code)
    if flt.review == UNREVIEWED:
        where.append(Review.decision.is_(None))
    elif flt.review is not None:
        where.append(Review.decision == flt.review)
    if flt.text is not None:
        where.append(
            or_(
                Item.result_text.icontains(flt.text, autoescape=True),
                cast(Item.result_json, Text).icontains(flt.text, autoescape=True),
                Item.custom_id.icontains(flt.text, autoescape=True),
                Item.source.icontains(flt.text, autoescape=True),
            )
        )
    return where


def joined(*columns: Any) -> Select[Any]:
    """``SELECT columns FROM items LEFT JOIN reviews``."""
    return select(*columns).select_from(Item).outerjoin(Review, Review.item_id == Item.id)


def live_job(session: Session, job_id: str) -> Job:
    """The job, unless it does not exist or is being deleted (gone for everyone then)."""
    job = session.get(Job, job_id)
    if job is None or job.status == JobStatus.deleting:
        raise ReviewJobNotFoundError(f"No job {job_id!r}.")
    return job
