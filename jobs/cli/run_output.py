"""What ``llava-batch run`` writes while it works: each item's result as soon as it and every item
before it have finished (submission order, so the output is the same as ``results``), in any
results format of ``jobs.exports`` or as ``text`` lines for people.

The rows come from the database, the system of record: a result is shown once it is recorded,
and a resumed run (``run --resume JOB``) writes the job's whole output again, the items finished
before the interruption first, then the rest as they finish.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from enum import StrEnum
from itertools import takewhile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from jobs.errors import RequestError
from jobs.exports import ResultFormat, ResultWriter, open_result_writer
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus

# The rows are read and built by the queries (SQLAlchemy), imported when a run reads them:
# ``RunFormat`` is an option type the CLI takes at start-up.
if TYPE_CHECKING:
    from jobs.db import SessionFactory
    from jobs.kinds.base import Kind
    from jobs.paging import ItemRecord


class RunFormat(StrEnum):
    """``run --format``: ``text`` for people, or any results format (``jobs.exports``)."""

    text = "text"
    jsonl = "jsonl"
    csv = "csv"
    openai = "openai"


class TextWriter(ResultWriter):
    """One line per item, ``SOURCE<TAB>RESULT``: a caption's own line breaks are folded (they
    would split it), a JSON result is written as JSON, a failed item as ``FAILED code: message``."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, item: ItemRecord) -> None:
        from jobs.queries import result_row

        row = result_row(item)
        if row["status"] == ItemStatus.expired:
            shown = f"EXPIRED {row['error_code']}: {row['error_message']}"
        elif row["error_code"]:
            shown = f"FAILED {row['error_code']}: {row['error_message']}"
        elif row["status"] == ItemStatus.cancelled:
            shown = "CANCELLED"
        else:
            result = row["result"]
            shown = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        self._stream.write(f"{row['input']}\t{' '.join(shown.split())}\n")


class StdoutNow:
    """``sys.stdout`` as it is at each write (a progress display may redirect it meanwhile)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class RunOutput:
    """Where a run's results go, opened before anything runs (a path that cannot be written is
    refused first), and the writer of its format."""

    def __init__(
        self,
        fmt: RunFormat,
        *,
        kind: Kind[Any],
        model: str,
        output: str | None = None,
        errors: str | None = None,
    ) -> None:
        check_run_output(fmt, output, errors, writable=False)
        self.fmt = fmt
        self.to_stdout = output is None
        self._files = ExitStack()
        try:
            stream = cast(IO[str], StdoutNow()) if output is None else self._open(output)
            error_stream = self._open(errors) if errors is not None else None
        except BaseException:
            self._files.close()
            raise
        self._streams = [stream] if error_stream is None else [stream, error_stream]
        if fmt is RunFormat.text:
            self.writer: ResultWriter = TextWriter(stream)
        else:
            self.writer = open_result_writer(
                ResultFormat(fmt.value), stream, kind=kind, model=model, errors=error_stream
            )

    def _open(self, path: str) -> IO[str]:
        try:
            return self._files.enter_context(open(path, "w", encoding="utf-8", newline=""))
        except OSError as exc:
            raise RequestError(
                f"{path}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
            ) from exc

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._files.close()

    def __enter__(self) -> RunOutput:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def check_run_output(
    fmt: RunFormat, output: str | None, errors: str | None, *, writable: bool = True
) -> None:
    """Refuses a bad combination of output flags, and (``writable``) a path that cannot be
    written, before anything is submitted or loaded, without emptying a file that exists."""
    if errors is not None and fmt is not RunFormat.openai:
        raise RequestError("--errors goes with --format openai.", code="invalid_option")
    if errors is not None and output is not None and _same_file(errors, output):
        raise RequestError("--errors must name another file than -o.", code="invalid_output")
    for path in (output, errors) if writable else ():
        if path is None:
            continue
        existed = os.path.exists(path)
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise RequestError(
                f"{path}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
            ) from exc
        if not existed:
            Path(path).unlink(missing_ok=True)


class FinishedItems:
    """Writes a job's items to ``output`` in submission order as they finish: each call writes
    those after the last one written, up to the first one not finished yet."""

    def __init__(self, session_factory: SessionFactory, job_id: str, output: RunOutput) -> None:
        self._session_factory = session_factory
        self._job_id = job_id
        self._output = output
        self._after = -1  # the seq of the last item written
        self.written = 0

    def write_finished(self) -> int:
        """Writes what has finished since the last call; returns how many items."""
        written, chunk = 0, 64  # a run usually finds one batch finished: read little first
        while True:
            # Read, then write: a slow reader of the output (a pipe, a full disk) must not hold
            # a read transaction open (docs/design.md#no-slow-work-inside-a-transaction).
            items = self._read_after(self._after, chunk)
            finished = list(takewhile(lambda item: item.status in TERMINAL_ITEM_STATES, items))
            for item in finished:
                self._output.writer.write(item)
                self._after = item.seq
                written += 1
            if len(finished) < chunk:  # the last rows, or one not finished yet
                break
            chunk = min(chunk * 2, 1024)
        self._output.flush()
        self.written += written
        return written

    def _read_after(self, seq: int, limit: int) -> Sequence[ItemRecord]:
        from jobs.paging import items_after

        with self._session_factory() as session:
            return items_after(session, self._job_id, seq, limit=limit).items


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()
