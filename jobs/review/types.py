"""What the review layer hands out: plain frozen values, no SQLAlchemy (a page renders them
after its session is gone), and the rules for the values a caller passes in."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobs.errors import RequestError
from jobs.states import ItemStatus
from jobs.states import ReviewState as ReviewState  # re-exported: the review layer's value

APPROVED = ReviewState.approved.value
REJECTED = ReviewState.rejected.value
UNREVIEWED = ReviewState.unreviewed.value
DECISIONS = (APPROVED, REJECTED)
REVIEW_STATES = (APPROVED, REJECTED, UNREVIEWED)

MAX_REVIEWER_CHARS = 200
MAX_TEXT_FILTER_CHARS = 200
MAX_EDIT_CHARS = 1_000_000
MAX_PAGE = 500


class Count(int):
    """A number of items counted up to a bound: ``more`` when there are more than it says (the
    review page counts a 1M-item job's rows no further than that). Shown as ``10,000+`` then,
    as the plain number otherwise."""

    more: bool

    def __new__(cls, n: int, more: bool = False) -> Count:
        count = super().__new__(cls, n)
        count.more = more
        return count

    @classmethod
    def sum(cls, counts: Iterable[Count]) -> Count:
        """Their sum: at least that many if any of them is."""
        counts = list(counts)
        return cls(builtins.sum(counts), any(c.more for c in counts))

    def __str__(self) -> str:
        return f"{int(self):,}+" if self.more else str(int(self))

    def __html__(self) -> str:  # what Jinja2 shows
        return str(self)


@dataclass(frozen=True)
class ItemFilter:
    """Which of a job's items a page shows; every field given must hold (None: any)."""

    status: str | None = None  # an ItemStatus value
    error_code: str | None = None
    review: str | None = None  # approved | rejected | unreviewed
    # Case-insensitive substring of the result text or JSON text, the custom id or the input.
    text: str | None = None

    def checked(self) -> ItemFilter:
        """This filter, refused with ``invalid_filter`` if a field holds what no item can
        match (a typo in a URL, not an empty page); a blank text is no text filter."""
        if self.status is not None and self.status not in {s.value for s in ItemStatus}:
            states = ", ".join(s.value for s in ItemStatus)
            raise RequestError(
                f"Unknown item status {self.status!r}: one of {states}.", code="invalid_filter"
            )
        if self.review is not None and self.review not in REVIEW_STATES:
            raise RequestError(
                f"Unknown review state {self.review!r}: one of {', '.join(REVIEW_STATES)}.",
                code="invalid_filter",
            )
        if self.error_code is not None and len(self.error_code) > 64:
            raise RequestError("An error code has at most 64 characters.", code="invalid_filter")
        text = self.text.strip() if self.text is not None else None
        if text is not None and len(text) > MAX_TEXT_FILTER_CHARS:
            raise RequestError(
                f"A text search has at most {MAX_TEXT_FILTER_CHARS} characters.",
                code="invalid_filter",
            )
        return ItemFilter(self.status, self.error_code or None, self.review, text or None)

    @property
    def empty(self) -> bool:
        return not (self.status or self.error_code or self.review or self.text)


@dataclass(frozen=True)
class ReviewRow:
    """One item as the review grid shows it: the model's result, and the review beside it."""

    item_id: str
    seq: int
    custom_id: str | None
    input_name: str  # the input's file name or key, as the user gave it
    status: str
    result_text: str | None
    result_json: Any | None
    error_code: str | None
    error_message: str | None
    error_words: str | None  # the failure's reason in words (jobs.errors.ITEM_ERROR_WORDS)
    finish_reason: str | None  # "length": the output was cut at its token budget
    schema_invalid: bool  # the output does not validate against the job's schema
    decision: str | None  # approved | rejected | None (unreviewed)
    edited_text: str | None
    edited_json: Any | None
    reviewer: str | None
    reviewed_at: datetime | None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length" or self.error_code == "output_truncated"

    @property
    def edited(self) -> bool:
        return self.edited_text is not None or self.edited_json is not None


@dataclass(frozen=True)
class Page:
    rows: list[ReviewRow]
    # Items of the job that match the filter, and items of the job: each counted up to a
    # bound (``jobs.review.listing.COUNT_BOUND``), ``more`` beyond it.
    shown: Count
    total: Count
    # The keys of the neighbouring pages: list_items(after=next_after), (before=prev_before);
    # None where no item matching the filter lies that way.
    next_after: int | None
    prev_before: int | None


@dataclass(frozen=True)
class PageResult:
    """One page of a document item (``item_pages``)."""

    page_number: int
    result_text: str | None
    result_json: Any | None
    error_code: str | None
    error_message: str | None
    error_words: str | None
    tokens_out: int | None


@dataclass(frozen=True)
class ItemDetail(ReviewRow):
    """Everything the item page shows: the grid's row, and how the item was asked and run."""

    job_id: str
    job_kind: str
    job_status: str
    schema: dict[str, Any] | None  # extract: the job's JSON Schema
    prompt: str | None  # the item's own prompt, else the job's
    questions: list[str] | None  # ask: the item's questions, else the job's
    request: dict[str, Any] | None  # what the item asks beyond its job (items.request)
    model: str | None  # what produced the result (None: never claimed)
    model_revision: str | None
    quantization: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    input_uris: list[str]  # the item's inputs in order (an OpenAI request may carry several)
    pages: list[PageResult]  # a document's pages (extract of a PDF); empty otherwise

    @property
    def inputs(self) -> int:
        return len(self.input_uris)
