"""What the review pages read: a job's items a page at a time, with their reviews; the error
codes for the filter chips; one item in full.

A page is a keyset range of the (job_id, seq) index read in seq order and stopped at its
limit, joined to the reviews of only the rows it returns, so a page of 100 costs about 100
rows whatever the job's size. Every count (``shown`` and ``total``, the items per state, per
error code) stops at ``COUNT_BOUND`` matching rows and says ``more`` beyond (``Count``):
counting all of a 1M-item job's rows took the page 0.7 to 1.9 s (bench/review_page.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, literal, select, text
from sqlalchemy.orm import Session

from jobs.db import Item, ItemInput, ItemPage, Job, Review, SessionFactory
from jobs.errors import ItemErrorCode, RequestError, error_words
from jobs.review.filters import conditions, joined, live_job
from jobs.review.types import (
    MAX_PAGE,
    UNREVIEWED,
    Count,
    ItemDetail,
    ItemFilter,
    Page,
    PageResult,
    ReviewRow,
)
from jobs.states import ItemStatus, JobStatus

# The most rows a count reads before it says "more" (``Count``); read at each call, so a test
# may lower it.
COUNT_BOUND = 10_000

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
        total = bounded_count(session, _ones().where(Item.job_id == job_id))
        if flt.empty:
            shown = total
        elif after is None and before is None and not more_after:
            shown = Count(len(found))  # the first page holds them all: a rare search counts no more
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


def _count(session: Session, job_id: str, flt: ItemFilter, total: Count) -> Count:
    """How many of the job's ``total`` items match ``flt`` (up to the bound). A review state
    alone is counted from the reviews' index, not from a join of every item of the job."""
    if flt.review is not None and flt == ItemFilter(review=flt.review):
        decided = select(literal(1)).select_from(Review).where(Review.job_id == job_id)
        if flt.review != UNREVIEWED:
            return bounded_count(session, decided.where(Review.decision == flt.review))
        if not total.more:  # then fewer are reviewed than the bound: exact
            return Count(
                total - bounded_count(session, decided.where(Review.decision.is_not(None)))
            )
    return bounded_count(session, _ones().where(*conditions(job_id, flt)))


def _ones() -> Select[Any]:
    return select(literal(1)).select_from(Item)


def bounded_count(session: Session, ones: Select[Any]) -> Count:
    """How many rows ``ones`` selects, read no further than ``COUNT_BOUND`` of them and one:
    ``SELECT count(*) FROM (… LIMIT bound + 1)``."""
    found = session.scalar(select(func.count()).select_from(ones.limit(COUNT_BOUND + 1).subquery()))
    n = int(found or 0)
    return Count(min(n, COUNT_BOUND), n > COUNT_BOUND)


def item_counts(session_factory: SessionFactory, job_id: str) -> dict[str, Count]:
    """The job's items per state (only states that have some), each counted up to the bound:
    one short read of the (job_id, status, seq) index per state, not a GROUP BY of all the
    job's rows (0.15 to 0.26 s at 1M items on PostgreSQL)."""
    with session_factory() as session:
        live_job(session, job_id)
        counts = {
            state.value: bounded_count(
                session, _ones().where(Item.job_id == job_id, Item.status == state.value)
            )
            for state in ItemStatus
        }
        return {state: n for state, n in counts.items() if n}


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


# The job's distinct error codes, one probe of ix_items_job_error_code each (a skip scan):
# not a GROUP BY over each failed item.
_CODES = text(
    """
WITH RECURSIVE codes(code) AS (
  SELECT (SELECT error_code FROM items WHERE job_id = :job_id AND error_code IS NOT NULL
          ORDER BY error_code LIMIT 1)
  UNION ALL
  SELECT (SELECT error_code FROM items WHERE job_id = :job_id AND error_code IS NOT NULL
            AND error_code > codes.code ORDER BY error_code LIMIT 1)
  FROM codes WHERE codes.code IS NOT NULL
)
SELECT code FROM codes WHERE code IS NOT NULL
"""
)


def error_codes(session_factory: SessionFactory, job_id: str) -> list[tuple[str, Count]]:
    """The job's items' error codes with how many items have each (up to the bound), most
    first."""
    with session_factory() as session:
        live_job(session, job_id)
        codes = session.scalars(_CODES, {"job_id": job_id}).all()
        # IS NOT NULL said, not only implied: both planners then surely take the partial index.
        having = [Item.job_id == job_id, Item.error_code.is_not(None)]
        counted = [
            (str(code), bounded_count(session, _ones().where(*having, Item.error_code == code)))
            for code in codes
        ]
        return sorted(counted, key=lambda pair: (-pair[1], pair[0]))


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
