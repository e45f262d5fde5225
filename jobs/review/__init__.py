"""Review of a job's results (issue 23): pages of items with their reviews, and the decisions
and edits a reviewer makes (docs/design.md#reviews). The values are plain (``types``); the
functions load SQLAlchemy only when first called, so importing this package for its types
costs a command nothing at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from jobs.review.types import (
    APPROVED,
    DECISIONS,
    REJECTED,
    REVIEW_STATES,
    UNREVIEWED,
    Count,
    ItemDetail,
    ItemFilter,
    Page,
    PageResult,
    ReviewRow,
    ReviewState,
)

if TYPE_CHECKING:
    from jobs.db import SessionFactory

__all__ = [
    "APPROVED",
    "DECISIONS",
    "REJECTED",
    "REVIEW_STATES",
    "UNREVIEWED",
    "Count",
    "ItemDetail",
    "ItemFilter",
    "Page",
    "PageResult",
    "ReviewRow",
    "ReviewState",
    "clear",
    "decide",
    "decide_filtered",
    "edit",
    "error_codes",
    "item_counts",
    "item_detail",
    "list_items",
]


def list_items(
    session_factory: SessionFactory,
    job_id: str,
    flt: ItemFilter,
    *,
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
) -> Page:
    from jobs.review import listing

    return listing.list_items(session_factory, job_id, flt, after=after, before=before, limit=limit)


def error_codes(session_factory: SessionFactory, job_id: str) -> list[tuple[str, Count]]:
    from jobs.review import listing

    return listing.error_codes(session_factory, job_id)


def item_counts(session_factory: SessionFactory, job_id: str) -> dict[str, Count]:
    from jobs.review import listing

    return listing.item_counts(session_factory, job_id)


def item_detail(session_factory: SessionFactory, item_id: str) -> ItemDetail | None:
    from jobs.review import listing

    return listing.item_detail(session_factory, item_id)


def decide(
    session_factory: SessionFactory, item_ids: Sequence[str], decision: str, reviewer: str
) -> int:
    from jobs.review import decisions

    return decisions.decide(session_factory, item_ids, decision, reviewer)


def decide_filtered(
    session_factory: SessionFactory, job_id: str, flt: ItemFilter, decision: str, reviewer: str
) -> int:
    from jobs.review import decisions

    return decisions.decide_filtered(session_factory, job_id, flt, decision, reviewer)


def edit(
    session_factory: SessionFactory,
    item_id: str,
    edited: str,
    reviewer: str,
    *,
    decision: str | None = APPROVED,
) -> None:
    from jobs.review import decisions

    decisions.edit(session_factory, item_id, edited, reviewer, decision=decision)


def clear(session_factory: SessionFactory, item_id: str) -> None:
    from jobs.review import decisions

    decisions.clear(session_factory, item_id)
