"""The ``output`` delivery: an ended job's results written to its folder (``jobs.output_uri``,
named when it was made: ``jobs.delivery.targets``) in its format (``jobs.output_format``).

What lands in the folder (docs/design.md#what-a-jobs-end-sends-deliveries):

- ``results.jsonl`` (``jsonl``, ``openai``) or ``results.csv`` (``csv``): the succeeded items,
  written by ``jobs.exports``' writers; ``txt``: one ``<input name>.txt`` per succeeded item
  instead, named as ``results --format txt`` names them (``jobs.sidecars``);
- ``errors.jsonl``: the failed, cancelled and expired items (``jsonl``, ``csv``, ``txt``: one
  ``results`` row each; ``openai``: the OpenAI Batch error file's lines);
- ``manifest.json``, last: the job, its status, the format, the files and their counts. A
  pipeline waits for it: once it is there, every other file is whole.

A job with no results writes them all the same (an empty ``results.jsonl``, a ``results.csv``
of its header), so whatever waits for the files is never left waiting.

Each file is whole or absent under its name: a local one is streamed into a hidden temporary
file beside it, flushed to disk and renamed (``storage.atomic_file``); an S3 one is streamed
into a spooled temporary file (memory up to ``SPOOL_BYTES``, then disk) and uploaded in one
PUT, or a multipart upload S3 shows only once complete. The names are fixed, so a sweeper
that died after writing some and before recording the delivery has the next one write the
same names again: one set of files per job end, never two. Items are read a page at a time,
each page in its own short read, so neither memory nor a transaction grows with the job.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from jobs.db import Item, Job, SessionFactory
from jobs.delivery.outbox import Attempt, DeliveryTask, Handler
from jobs.delivery.targets import OUTPUT_SETTING, allowed
from jobs.errors import RequestError
from jobs.exports import JsonlWriter, OpenAIWriter, ResultFormat, ResultWriter, open_result_writer
from jobs.hooks import reached
from jobs.kinds.registry import get_kind
from jobs.paging import RECORD_COLUMNS, ItemRecord, Page, items_after, walk
from jobs.sidecars import name_sidecars, sidecar_text, write_named
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus, JobStatus
from storage import Blobs, StorageError, atomic_file, is_s3_uri

log = logging.getLogger(__name__)

ERRORS = "errors.jsonl"
MANIFEST = "manifest.json"
SPOOL_BYTES = 8 * 1024 * 1024  # an S3 file held in memory up to this, then on disk
PAGE = 1000  # items read at a time


def results_name(fmt: str) -> str | None:
    """The results file of ``fmt`` (None: ``txt`` writes one file per item instead)."""
    return {"jsonl": "results.jsonl", "openai": "results.jsonl", "csv": "results.csv"}.get(fmt)


def output_handler(
    session_factory: SessionFactory, blobs: Blobs, prefixes: Sequence[str] = ()
) -> Handler:
    """The ``output`` handler: writes the job's files to ``task.target``, if it lies within
    ``prefixes`` (this sweeper's ``LLAVA_BATCH_OUTPUT_PREFIXES``: a job submitted where the
    setting was another is held to this one's)."""

    def deliver(task: DeliveryTask) -> Attempt:
        if not allowed(task.target, prefixes):
            return Attempt(
                ok=False, detail=f"{task.target} is outside {OUTPUT_SETTING}", retry=False
            )
        with session_factory() as session:
            job = session.get(Job, task.job_id)
            facts = None if job is None else (job.status, job.kind, job.model, job.output_format)
            ended_at = None if job is None else job.finished_at
        if facts is None or facts[0] == JobStatus.deleting:
            return Attempt(ok=False, detail="the job was deleted", retry=False)
        if ended_at is None or ended_at > task.created_at:
            # A retry reopened the job since this end (finalise stamps both with one time):
            # written now, a manifest would stand over a running job, or replace a later end's
            # files with this end's status. Every end queues its own write; the last one writes.
            return Attempt(
                ok=False, detail="superseded: the job was retried since it ended", retry=False
            )
        _, kind, model, fmt = facts
        target = _Target(task.target, blobs)
        try:
            written = _write(session_factory, task, target, kind, model, fmt or "jsonl")
        except (StorageError, OSError, RequestError) as exc:
            return Attempt(ok=False, detail=f"{task.target}: {exc}")
        said = f"{fmt}: {written['results']} result(s), {written['errors']} error(s)"
        return Attempt(ok=True, detail=said, result={"uri": task.target, "format": fmt, **written})

    return deliver


def _write(
    sf: SessionFactory, task: DeliveryTask, target: _Target, kind: str, model: str, fmt: str
) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    files: list[str] = []
    target.clear_leftovers(results_name(fmt), ERRORS, MANIFEST)
    with ExitStack() as files_open:
        errors_file = files_open.enter_context(target.open(ERRORS))
        name = results_name(fmt)
        if name is None:  # txt: a file per item, then the errors file
            errors = JsonlWriter(errors_file)
            counts = _write_sidecars(sf, task.job_id, target, errors)
        else:
            results_file = files_open.enter_context(target.open(name))
            counts = _write_results(sf, task.job_id, fmt, kind, model, results_file, errors_file)
            files.append(name)
        files.append(ERRORS)
    manifest = {
        "job_id": task.job_id,
        "status": task.job_status,
        "format": fmt,
        "files": files,
        **counts,
    }
    with target.open(MANIFEST) as f:
        f.write(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return {"manifest": target.uri(MANIFEST), "files": files, **counts}


def _write_results(
    sf: SessionFactory,
    job_id: str,
    fmt: str,
    kind: str,
    model: str,
    results: IO[str],
    errors: IO[str],
) -> dict[str, int]:
    writer: ResultWriter
    if fmt == ResultFormat.openai:  # its own writer splits the two files
        writer = OpenAIWriter(results, model=model, errors=errors)
        failed: ResultWriter = writer
    else:
        writer = open_result_writer(ResultFormat(fmt), results, kind=get_kind(kind), model=model)
        failed = JsonlWriter(errors)
    succeeded = other = 0
    for item in _items(sf, job_id):
        if item.status == ItemStatus.succeeded:
            writer.write(item)
            succeeded += 1
        elif item.status in TERMINAL_ITEM_STATES:
            failed.write(item)
            other += 1
        # else: queued or running again (a retry reopened the job meanwhile): its next end
        # writes the folder again.
    return {"results": succeeded, "errors": other}


def _write_sidecars(
    sf: SessionFactory, job_id: str, target: _Target, errors: JsonlWriter
) -> dict[str, int]:
    counts = {"results": 0, "errors": 0}

    def passing() -> Iterator[tuple[tuple[str, ...], int, ItemRecord]]:
        # The errors file is written on the way through the one pass over the items.
        for entry in name_sidecars(_sources(sf, job_id), _items(sf, job_id)):
            if entry[2].status == ItemStatus.succeeded:
                counts["results"] += 1
            elif entry[2].status in TERMINAL_ITEM_STATES:
                errors.write(entry[2])
                counts["errors"] += 1
            yield entry

    if target.local is not None:
        written = write_named(str(target.local), passing(), overwrite=True)
        if written.escaping:
            counts["not_written"] = written.escaping  # their folder is a link out of the target
        return counts
    for relative, _renamed, item in passing():
        if item.status == ItemStatus.succeeded:
            name = "/".join(relative)
            target.put(name, sidecar_text(item).encode("utf-8", "replace"))
    return counts


def _items(
    sf: SessionFactory, job_id: str, columns: Sequence[Any] = RECORD_COLUMNS
) -> Iterator[ItemRecord]:
    """The job's items in submission order, a page per short read (no transaction stays open
    while a page is written out)."""

    def read(after: int) -> Page:
        with sf() as session:
            return items_after(session, job_id, after, limit=PAGE, columns=columns)

    return walk(read)


def _sources(sf: SessionFactory, job_id: str) -> Iterator[str]:
    return (row.source for row in _items(sf, job_id, columns=(Item.source,)))


class _Target:
    """The job's folder: S3 (``s3://bucket/prefix/``) or a local directory (``/path/``)."""

    def __init__(self, folder: str, blobs: Blobs) -> None:
        self.folder = folder if folder.endswith("/") else folder + "/"
        self.blobs = blobs
        self.local = None if is_s3_uri(folder) else Path(folder)

    def uri(self, name: str) -> str:
        return self.folder + name

    def clear_leftovers(self, *names: str | None) -> None:
        """Removes the temporary files a writer killed before renaming them left beside
        ``names`` (S3 keeps nothing of an upload that did not complete)."""
        if self.local is None or not self.local.is_dir():
            return
        for name in filter(None, names):
            for leftover in self.local.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[str]]:
        """A text file that appears under ``name`` whole when the block ends without error."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.local / name) as raw:
                yield from _written(raw)
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as raw:
            yield from _written(raw)
            raw.seek(0)
            self.blobs.write_uri(self.uri(name), raw)  # type: ignore[arg-type]

    def put(self, name: str, data: bytes) -> None:
        self.blobs.write_uri(self.uri(name), data)


def _written(raw: IO[bytes]) -> Iterator[IO[str]]:
    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    yield text
    text.flush()
    text.detach()  # the raw file stays open: its owner publishes it
    # Whole, not yet under its name: a sweeper killed here leaves nothing at the name.
    reached("delivery:output:file-written")
