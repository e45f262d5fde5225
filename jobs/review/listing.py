"""What the review pages read: a job's items a page at a time, with their reviews; the error
codes for the filter chips; one item in full.

A page is a keyset range of the (job_id, seq) index read in seq order and stopped at its
limit, joined to the reviews of only the rows it returns, so a page of 100 costs about 100
rows whatever the job's size. The counts (``shown`` and ``total``) read the job's rows: an
index-only count without a filter; with one, a scan of the job's rows (bench/review_page.py
times both on a 50k-item job).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.db import Item, ItemInput, ItemPage, Job, Review, SessionFactory
from jobs.errors import ItemErrorCode, RequestError, error_words
from jobs.review.filters import conditions, joined, live_job
from jobs.review.types import (
    MAX_PAGE,
    UNREVIEWED,
    ItemDetail,
    ItemFilter,
    Page,
    PageResult,
    ReviewRow,
)
from jobs.states import JobStatus

ROW_COLUMNS = (
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
    Review.decision,
    Review.edited_text,
    Review.edited_json,
    Review.reviewer,
    Review.decided_at,
)


def list_items(
    session_factory: SessionFactory,
    job_id: str,
    flt: ItemFilter,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
) -> Page:
    """The job's items matching ``flt`` in seq order: the first ``limit`` after seq ``after``,
    or the last ``limit`` before seq ``before`` (the previous page), or the first page."""
    if after is not None and before is not None:
        raise RequestError("Page after a key or before one, not both.", code="invalid_filter")
    if not 1 <= limit <= MAX_PAGE:
        raise RequestError(f"A page holds 1 to {MAX_PAGE} items.", code="invalid_filter")
    flt = flt.checked()
    with session_factory() as session:
        live_job(session, job_id)
        where = conditions(job_id, flt)
        query = joined(*ROW_COLUMNS).where(*where)
        if before is not None:
            found = session.execute(
                query.where(Item.seq < before).order_by(Item.seq.desc()).limit(limit + 1)
            ).all()
            more_before = len(found) > limit
            found = list(reversed(found[:limit]))
            # An empty page links nowhere: no probe (nor one past the column's range).
            more_after = bool(found) and _any(session, where, Item.seq > found[-1].seq)
        else:
            if after is not None:
                query = query.where(Item.seq > after)
            found = session.execute(query.order_by(Item.seq).limit(limit + 1)).all()
            more_after = len(found) > limit
            found = found[:limit]
            more_before = (
                bool(found) and after is not None and _any(session, where, Item.seq < found[0].seq)
            )
        everything = select(func.count()).select_from(Item).where(Item.job_id == job_id)
        total = int(session.scalar(everything) or 0)
        if flt.empty:
            shown = total
        elif after is None and before is None and not more_after:
            shown = len(found)  # the first page holds them all: a rare search counts no more
        else:
            shown = _count(session, job_id, flt, total)
        rows = [review_row(r) for r in found]
        return Page(
            rows=rows,
            shown=shown,
            total=total,
            next_after=rows[-1].seq if more_after and rows else None,
            prev_before=rows[0].seq if more_before and rows else None,
        )


def _any(session: Session, where: list[Any], beyond: Any) -> bool:
    probe = select(Item.seq).where(*where, beyond).limit(1)
    return session.execute(probe).first() is not None


def _count(session: Session, job_id: str, flt: ItemFilter, total: int) -> int:
    """How many of the job's ``total`` items match ``flt``. A review state alone is counted
    from the reviews' index, not from a join of every item of the job."""
    if flt.review is not None and flt == ItemFilter(review=flt.review):
        decided = select(func.count()).select_from(Review).where(Review.job_id == job_id)
        if flt.review != UNREVIEWED:
            return int(session.scalar(decided.where(Review.decision == flt.review)) or 0)
        reviewed = int(session.scalar(decided.where(Review.decision.is_not(None))) or 0)
        return total - reviewed
    query = select(func.count()).select_from(Item)
    return int(session.scalar(query.where(*conditions(job_id, flt))) or 0)


def review_row(row: Any) -> ReviewRow:
    return ReviewRow(
        item_id=row.id,
        seq=row.seq,
        custom_id=row.custom_id,
        input_name=row.source,
        status=row.status,
        result_text=row.result_text,
        result_json=row.result_json,
        error_code=row.error_code,
        error_message=row.error_message,
        error_words=error_words(row.error_code),
        finish_reason=row.finish_reason,
        schema_invalid=row.error_code == ItemErrorCode.output_invalid,
        decision=row.decision,
        edited_text=row.edited_text,
        edited_json=row.edited_json,
        reviewer=row.reviewer,
        reviewed_at=row.decided_at,
    )


def error_codes(session_factory: SessionFactory, job_id: str) -> list[tuple[str, int]]:
    """The job's items' error codes with how many items have each, most first."""
    with session_factory() as session:
        live_job(session, job_id)
        n = func.count().label("n")
        found = session.execute(
            select(Item.error_code, n)
            .where(Item.job_id == job_id, Item.error_code.is_not(None))
            .group_by(Item.error_code)
            .order_by(n.desc(), Item.error_code)
        ).all()
        return [(str(code), int(count)) for code, count in found]


def item_detail(session_factory: SessionFactory, item_id: str) -> ItemDetail | None:
    """One item in full, or None if there is none (or its job is being deleted)."""
    with session_factory() as session:
        found = session.execute(
            joined(*ROW_COLUMNS, Item, Job)
            .join(Job, Job.id == Item.job_id)
            .where(Item.id == item_id, Job.status != JobStatus.deleting)
        ).first()
        if found is None:
            return None
        item, job = found.Item, found.Job
        others = session.scalars(
            select(ItemInput.uri).where(ItemInput.item_id == item_id).order_by(ItemInput.position)
        ).all()
        pages = session.scalars(
            select(ItemPage).where(ItemPage.item_id == item_id).order_by(ItemPage.page_number)
        ).all()
        row = review_row(found)
        params: dict[str, Any] = job.params or {}
        request: dict[str, Any] = item.request or {}
        questions = request.get("questions") or params.get("questions")
        return ItemDetail(
            **{name: getattr(row, name) for name in ReviewRow.__dataclass_fields__},
            job_id=job.id,
            job_kind=job.kind,
            job_status=job.status,
            schema=params.get("schema"),
            prompt=item.prompt or job.prompt,
            questions=list(questions) if questions else None,
            request=item.request,
            model=item.model,
            model_revision=item.model_revision,
            quantization=item.quantization,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=(
                item.completion_tokens if item.completion_tokens is not None else item.tokens_out
            ),
            attempts=item.attempts,
            created_at=item.created_at,
            started_at=item.started_at,
            finished_at=item.finished_at,
            input_uris=[item.input_uri, *others],
            pages=[
                PageResult(
                    page_number=p.page_number,
                    result_text=p.result_text,
                    result_json=p.result_json,
                    error_code=p.error_code,
                    error_message=p.error_message,
                    error_words=error_words(p.error_code),
                    tokens_out=p.tokens_out,
                )
                for p in pages
            ],
        )
