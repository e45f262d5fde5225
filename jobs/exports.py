"""Results formats: one writer per format, fed one item at a time, so any export streams.

- ``jsonl``: one ``jobs.queries.result_row`` per line (with ``finish_reason`` and ``usage``).
- ``csv``: the kind's columns (``Kind.csv_fields`` / ``csv_rows``: one row per item, or one per
  question for ``ask``), then ``finish_reason, prompt_tokens, completion_tokens,
  total_tokens``. The item's usage goes on its first row only, so a column's sum is the job's.
- ``openai``: the OpenAI Batch output format. A succeeded item is
  ``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <a
  chat.completion>}, "error": null}``; a failed or cancelled item is ``{"id", "custom_id",
  "response": null, "error": {"code", "message"}}`` and goes to the errors stream (the output
  stream itself when there is none, as ``vllm run-batch`` writes them: nothing is dropped).
  Items not finished yet are left out and counted (``skipped``). The message content is the
  item's text, or the JSON text of a JSON result (an extraction; for ``ask``, its list of
  ``{"question", "answer"}``).

``write`` takes an item (``jobs.paging.ItemRecord``: an ``Item``, or a row of
``jobs.queries.iter_items``); a caller that streams items as they finish (``run``) can hand
each one over as it is recorded.
"""

from __future__ import annotations

import csv
import json
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any

from jobs.paging import ItemRecord
from jobs.queries import item_usage, result_row
from jobs.states import ItemStatus

if TYPE_CHECKING:
    from jobs.kinds import Kind

USAGE_COLUMNS = ("finish_reason", "prompt_tokens", "completion_tokens", "total_tokens")
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


class ResultFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    openai = "openai"


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
) -> ResultWriter:
    """A writer of ``fmt`` onto ``stream`` (``errors``: where ``openai`` puts failed items)."""
    if fmt is ResultFormat.openai:
        return OpenAIWriter(stream, model=model, errors=errors)
    if fmt is ResultFormat.csv:
        return CsvWriter(stream, kind)
    return JsonlWriter(stream)


class JsonlWriter(ResultWriter):
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, item: ItemRecord) -> None:
        self._stream.write(json.dumps(result_row(item), ensure_ascii=False) + "\n")


class CsvWriter(ResultWriter):
    """The kind lays its rows out; the usage columns follow, on each item's first row."""

    def __init__(self, stream: IO[str], kind: Kind[Any]) -> None:
        self._kind = kind
        self._writer = csv.DictWriter(stream, fieldnames=(*kind.csv_fields(), *USAGE_COLUMNS))
        self._writer.writeheader()

    def write(self, item: ItemRecord) -> None:
        row = result_row(item)
        row.pop("model")  # one job, one model: status and the jobs table say which
        usage = row.pop("usage") or {}
        first = {"finish_reason": row.pop("finish_reason"), **usage}
        for index, line in enumerate(self._kind.csv_rows(row)):
            self._writer.writerow({**line, **first} if index == 0 else line)


class OpenAIWriter(ResultWriter):
    def __init__(self, stream: IO[str], *, model: str, errors: IO[str] | None = None) -> None:
        self._stream = stream
        self._errors = errors if errors is not None else stream
        self._model = model
        self.skipped = 0

    def write(self, item: ItemRecord) -> None:
        if item.status == ItemStatus.succeeded:
            line = build_openai_success(item, self._model)
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        elif item.status in (ItemStatus.failed, ItemStatus.cancelled, ItemStatus.expired):
            # An expired item is written as OpenAI writes one: code ``batch_expired``.
            line = build_openai_error(item)
            self._errors.write(json.dumps(line, ensure_ascii=False) + "\n")
        else:  # queued or running: no output yet
            self.skipped += 1


def build_openai_success(item: ItemRecord, model: str) -> dict[str, Any]:
    """One line of an OpenAI Batch output file: the item's answer as a chat.completion."""
    if item.result_json is not None:
        content = json.dumps(item.result_json, ensure_ascii=False)
    else:
        content = item.result_text or ""
    when = item.finished_at or item.created_at
    body = {
        "id": f"chatcmpl-{item.id}",
        "object": "chat.completion",
        "created": int(when.timestamp()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": item.finish_reason or "stop",
            }
        ],
        "usage": item_usage(item) or ZERO_USAGE,
    }
    return {
        "id": f"batch_req_{item.id}",
        "custom_id": item.custom_id,
        "response": {"status_code": 200, "request_id": item.id, "body": body},
        "error": None,
    }


def build_openai_error(item: ItemRecord) -> dict[str, Any]:
    """One line of an OpenAI Batch error file: the item's error code and message."""
    if item.status == ItemStatus.cancelled:
        code = item.error_code or "cancelled"
        message = item.error_message or "The job was cancelled before this item ran."
    else:
        code = item.error_code or "internal_error"
        message = item.error_message or code
    return {
        "id": f"batch_req_{item.id}",
        "custom_id": item.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
