"""Results formats: one writer per format, fed one item at a time, so any export streams.

- ``jsonl``: one ``jobs.queries.result_row`` per line (with ``finish_reason`` and ``usage``).
- ``csv``: the kind's columns (``Kind.csv_fields`` / ``csv_rows``: one row per item, or one per
  question for ``ask``), then ``finish_reason, prompt_tokens, completion_tokens,
  total_tokens``. The item's usage goes on its first row only, so a column's sum is the job's.
- ``openai``: the OpenAI Batch output format, each line as ``jobs.openai_batch`` builds it: a
  succeeded item goes to the output stream, a failed, cancelled or expired one to the errors
  stream (the output stream itself when there is none, in input order, as ``vllm run-batch``
  writes them: nothing is dropped). Items not finished yet are left out and counted
  (``skipped``).
- ``txt``: not a stream but a folder, one file per succeeded item (``jobs.sidecars``).

``results`` (``reviews``) adds each item's review (``jobs.review``) to ``jsonl`` and ``csv``:
``decision, edited, reviewer, reviewed_at`` (``jobs.queries.review_fields``; in ``csv`` after
the usage, on each item's first row). ``openai`` with ``use_edits`` writes a reviewer's edit
as the answer's content in place of the model's: an edited item that failed (an extraction
whose output did not match its schema, corrected by hand) is then written as a success.

``write`` takes an item (``jobs.paging.ItemRecord``: an ``Item``, or a row of
``jobs.queries.iter_items``); a caller that streams items as they finish (``run``) can hand
each one over as it is recorded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any

from jobs.states import ItemStatus

# The rows are built by the queries (SQLAlchemy), imported when one is written: the CLI takes
# ResultFormat for its options at start-up, before it knows whether it reads the database.
if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.db import Job
    from jobs.kinds.base import Kind
    from jobs.paging import ItemRecord

USAGE_COLUMNS = ("finish_reason", "prompt_tokens", "completion_tokens", "total_tokens")
REVIEW_COLUMNS = ("decision", "edited", "reviewer", "reviewed_at")


class ResultFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    openai = "openai"
    txt = "txt"  # one sidecar file per item, into a folder: jobs.sidecars


class ResultWriter:
    """Writes results, one item at a time; ``skipped`` counts items it left out."""

    skipped = 0

    def write(self, item: ItemRecord) -> None:
        raise NotImplementedError


def open_result_writer(
    fmt: ResultFormat,
    stream: IO[str],
    *,
    kind: Kind[Any],
    model: str,
    errors: IO[str] | None = None,
    reviews: bool = False,
    joined: bool = False,
    use_edits: bool = False,
) -> ResultWriter:
    """A writer of ``fmt`` onto ``stream`` (``errors``: where ``openai`` puts failed items;
    ``reviews``: ``jsonl`` and ``csv`` carry the review columns, read from each item when it
    was ``joined`` with its review (``jobs.paging.ReviewedRecord``), else empty; ``use_edits``:
    ``openai`` answers with a reviewer's edit where there is one, and needs ``joined``)."""
    if fmt is ResultFormat.txt:
        raise ValueError("txt writes a folder of files, not a stream: jobs.sidecars")
    if use_edits and not joined:
        raise ValueError("use_edits reads the edits: the items must be read with their reviews")
    if fmt is ResultFormat.openai:
        return OpenAIWriter(stream, model=model, errors=errors, use_edits=use_edits)
    review = _review_reader(joined) if reviews else None
    if fmt is ResultFormat.csv:
        return CsvWriter(stream, kind, review=review)
    return JsonlWriter(stream, review=review)


@dataclass(frozen=True)
class JobExport:
    """A job's results ready to be written: feed ``items`` to ``writer`` one at a time."""

    writer: ResultWriter
    items: Iterator[ItemRecord]


def open_job_export(
    session: Session,
    job: Job,
    fmt: ResultFormat,
    stream: IO[str],
    *,
    errors: IO[str] | None = None,
    statuses: Collection[str] | None = None,
    chunk: int = 1000,
    reviewed: str | None = None,
    use_edits: bool = False,
) -> JobExport:
    """``results`` of ``job`` in ``fmt`` onto ``stream``, as the CLI and the review page's
    export both write them: ``statuses``, ``reviewed`` (approved, rejected, unreviewed): only
    those items; ``use_edits``: ``openai`` answers with the reviewers' edits. ``jsonl`` and
    ``csv`` carry each item's review, read by a join only when the job has any."""
    from jobs.kinds.registry import get_kind
    from jobs.queries import has_reviews, iter_items

    joined = reviewed is not None or has_reviews(session, job.id)
    writer = open_result_writer(
        fmt,
        stream,
        kind=get_kind(job.kind),
        model=job.model,
        errors=errors,
        reviews=True,
        joined=joined,
        use_edits=use_edits and joined,  # nobody reviewed: there is no edit to use
    )
    items = iter_items(
        session, job.id, statuses=statuses, chunk=chunk, reviews=joined, reviewed=reviewed
    )
    return JobExport(writer, items)


ReviewReader = Callable[[Any], dict[str, Any]]


def _review_reader(joined: bool) -> ReviewReader:
    from jobs.queries import NO_REVIEW, review_fields

    # Not getattr with a default on rows read without the join: a Row's missing attribute
    # raises inside, and five of those per item halved the speed of an export.
    return review_fields if joined else lambda _item: dict(NO_REVIEW)


class JsonlWriter(ResultWriter):
    def __init__(self, stream: IO[str], *, review: ReviewReader | None = None) -> None:
        from jobs.queries import result_row  # once per export, not once per item

        self._stream = stream
        self._row = result_row
        self._review = review

    def write(self, item: ItemRecord) -> None:
        row = self._row(item)
        if self._review is not None:
            row.update(self._review(item))
        self._stream.write(json.dumps(row, ensure_ascii=False) + "\n")


class CsvWriter(ResultWriter):
    """The kind lays its rows out; the usage columns follow, on each item's first row."""

    def __init__(
        self, stream: IO[str], kind: Kind[Any], *, review: ReviewReader | None = None
    ) -> None:
        from jobs.queries import result_row  # once per export, not once per item

        self._kind = kind
        self._row = result_row
        self._review = review
        columns = REVIEW_COLUMNS if review is not None else ()
        fields = (*kind.csv_fields(), *USAGE_COLUMNS, *columns)
        self._writer = csv.DictWriter(stream, fieldnames=fields)
        self._writer.writeheader()

    def write(self, item: ItemRecord) -> None:
        row = self._row(item)
        row.pop("model")  # one job, one model: status and the jobs table say which
        row.pop("reused_from")  # the kind's columns; the jsonl format and SQL say which are copies
        usage = row.pop("usage") or {}
        first = {"finish_reason": row.pop("finish_reason"), **usage}
        if self._review is not None:
            review = self._review(item)
            if not isinstance(review["edited"], str | None):  # JSON, as in the result column
                review["edited"] = json.dumps(review["edited"], ensure_ascii=False)
            first.update(review)
        for index, line in enumerate(self._kind.csv_rows(row)):
            self._writer.writerow({**line, **first} if index == 0 else line)


class OpenAIWriter(ResultWriter):
    def __init__(
        self,
        stream: IO[str],
        *,
        model: str,
        errors: IO[str] | None = None,
        use_edits: bool = False,
    ) -> None:
        from jobs.openai_batch import error_line, success_line  # once per export

        self._stream = stream
        self._errors = errors if errors is not None else stream
        self._model = model
        self._success, self._error = success_line, error_line
        self._use_edits = use_edits
        self.skipped = 0

    def write(self, item: ItemRecord) -> None:
        edited = self._edit(item) if self._use_edits else None
        if edited is not None and item.status in (ItemStatus.succeeded, ItemStatus.failed):
            line = self._success(item, self._model, edited=edited)
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        elif item.status == ItemStatus.succeeded:
            line = self._success(item, self._model)
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        elif item.status in (ItemStatus.failed, ItemStatus.cancelled, ItemStatus.expired):
            line = self._error(item)
            self._errors.write(json.dumps(line, ensure_ascii=False) + "\n")
        else:  # queued or running: no output yet
            self.skipped += 1

    @staticmethod
    def _edit(item: Any) -> Any | None:  # a ReviewedRecord (use_edits reads with the join)
        return item.edited_json if item.edited_json is not None else item.edited_text
