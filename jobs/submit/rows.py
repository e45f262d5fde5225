"""Writing a submitted job's item rows: a small job in the caller's one transaction, a big one
in chunks, each committed and then published at once, so workers start on the first batch
while later rows are still being written.

A big job holds a submit lease (``jobs.submit_lease_expires_at``) while its rows are written:
each chunk's transaction renews it, the last one clears it, and until then the job is not
finalised. If the producer stops (a crash, Ctrl-C), the sweeper cancels the job once the lease
runs out; an interrupted producer cancels it at once itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.hooks import reached
from jobs.kinds import ItemAsk, Kind, KindParams, get_kind
from jobs.lifecycle import abandon_submissions, continue_submission
from jobs.states import ItemStatus
from jobs.submit.input_store import UPLOAD_THREADS, store_with
from jobs.submit.sources import INPUT_ERROR, InputSpec
from storage import Blobs

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest

log = logging.getLogger(__name__)

# Inputs checked, described and stored together; item rows per multi-row INSERT.
_CHUNK = 512
_ROWS_PER_INSERT = 2_000
# Rows a big job commits at a time (rounded down to whole messages). A job of at most this many
# is written in one transaction, as it always was. Beyond it, the first chunk is only the first
# message's rows, so the first batch waits for nothing else; later chunks are one multi-row
# INSERT each, large enough that a chunk's fixed cost (a job-row update, a COMMIT, a pipelined
# publish) stays small next to its rows, and small enough to hold the job row only briefly.
SUBMIT_CHUNK_ROWS = 2_000
# How long a big submit may take to write its next chunk (storing its local inputs included)
# before the sweeper takes it for dead and cancels the job: generous, because cancelling a live
# but slow submit is worse than noticing a dead one a few minutes late.
SUBMIT_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class Written:
    item_count: int
    dispatched: bool
    complete: bool  # False: the job was cancelled while its rows were written


def insert_items(
    session: Session,
    job: Job,
    request: SubmitRequest,
    inputs: Iterable[InputSpec],
    blobs: Blobs,
    *,
    dispatched_at: datetime,
    max_prompt_chars: int,
) -> list[str]:
    """Adds the items of ``job`` (already flushed) to ``session``, the caller's one
    transaction, stamped dispatched; local inputs are stored on the way. Returns their ids."""
    item_ids: list[str] = []
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for chunk in chunks(inputs, _CHUNK):
            new = item_rows(
                pool,
                job.id,
                request,
                chunk,
                blobs,
                first_seq=len(item_ids),
                dispatched_at=dispatched_at,
                max_prompt_chars=max_prompt_chars,
            )
            item_ids += [row["id"] for row in new]
            rows += new
            if len(rows) >= _ROWS_PER_INSERT:
                session.execute(insert(Item), rows)
                rows = []
    if rows:
        session.execute(insert(Item), rows)
    return item_ids


def write_in_chunks(
    session_factory: SessionFactory,
    publisher: Publisher,
    job: Job,
    request: SubmitRequest,
    inputs: Iterable[InputSpec],
    blobs: Blobs,
    *,
    max_prompt_chars: int,
) -> Written:
    """Inserts ``job`` (not yet added to any session) and its items chunk by chunk, each chunk
    in its own transaction and published as soon as it commits (commit, then publish, chunk by
    chunk). Stops, writing nothing more, if the job is cancelled meanwhile. If this raises
    after the first chunk committed, the job is cancelled (best effort; else the sweeper does
    it once the lease runs out). An IntegrityError (the idempotency key taken) is raised by the
    first chunk, before anything is committed."""
    batch_size = request.params.batch_size
    rest = max(batch_size, SUBMIT_CHUNK_ROWS // batch_size * batch_size)
    written, dispatching, committed = 0, True, False
    try:
        with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
            for chunk, last in _with_last(_sized(inputs, batch_size, rest)):
                stamp = utcnow()
                rows = item_rows(
                    pool,
                    job.id,
                    request,
                    chunk,
                    blobs,
                    first_seq=written,
                    dispatched_at=stamp if dispatching else None,
                    max_prompt_chars=max_prompt_chars,
                )
                lease = None if last else utcnow() + SUBMIT_LEASE
                with session_factory.begin() as session:
                    if not committed:
                        job.submit_lease_expires_at = lease
                        session.add(job)
                        session.flush()  # the job row first: items reference it
                    elif not continue_submission(session, job.id, lease_until=lease):
                        log.warning("submit stopped job=%s: the job was cancelled", job.id)
                        return Written(written, dispatching, complete=False)
                    for start in range(0, len(rows), _ROWS_PER_INSERT):
                        session.execute(insert(Item), rows[start : start + _ROWS_PER_INSERT])
                    reached("submit:chunk_written")  # inside the chunk's transaction
                committed = True
                written += len(rows)
                if dispatching:
                    ids = [row["id"] for row in rows]
                    dispatching = dispatch_items(
                        session_factory,
                        publisher,
                        job.id,
                        ids,
                        model=job.model,
                        batch_size=batch_size,
                        stamp=stamp,
                    )
                if not last:
                    reached("submit:chunk_published")  # between two chunks: nothing held
    except BaseException:
        if committed:
            _give_up(session_factory, job.id)
        raise
    return Written(written, dispatching, complete=True)


def _give_up(session_factory: SessionFactory, job_id: str) -> None:
    # A producer that stops half-way (Ctrl-C, an error) cancels its own job at once rather
    # than leave workers on a part of it until the sweeper notices; if even that fails, the
    # sweeper will, once the submit lease runs out.
    try:
        abandon_submissions(session_factory, job_id=job_id)
    except Exception:
        log.exception("could not cancel the half-written job=%s; the sweeper will", job_id)


def item_rows(
    pool: ThreadPoolExecutor,
    job_id: str,
    request: SubmitRequest,
    chunk: list[InputSpec],
    blobs: Blobs,
    *,
    first_seq: int,
    dispatched_at: datetime | None,
    max_prompt_chars: int,
) -> list[dict[str, Any]]:
    """The item rows of ``chunk`` (its local inputs stored first), numbered from
    ``first_seq``; ``dispatched_at`` None: the sweeper will dispatch them."""
    kind = get_kind(request.kind)
    rows: list[dict[str, Any]] = []
    for offset, (spec, (uri, sha256)) in enumerate(
        zip(chunk, store_with(pool, chunk, blobs), strict=True)
    ):
        ask = ask_for(kind, request.params, spec, max_prompt_chars)
        rows.append(
            {
                "id": new_id(),
                "job_id": job_id,
                "seq": first_seq + offset,
                "custom_id": spec.custom_id,
                "source": spec.source,
                "input_uri": uri,
                "input_sha256": sha256,
                "prompt": ask.prompt,
                "request": ask.request,
                "status": ItemStatus.queued,
                "attempts": 0,
                "dispatched_at": dispatched_at,
            }
        )
    return rows


def ask_for(kind: Kind[Any], params: KindParams, spec: InputSpec, max_prompt_chars: int) -> ItemAsk:
    ask = kind.item_ask(
        params,
        spec.prompt,
        spec.extra,
        where=spec.where or spec.source,
        max_prompt_chars=max_prompt_chars,
    )
    return with_input_error(ask, spec)


def with_input_error(ask: ItemAsk, spec: InputSpec) -> ItemAsk:
    """An input refused on its own (``InputSpec.input_error``) is recorded in its item's
    request: the worker fails the item with it, without reading anything."""
    if spec.input_error is None:
        return ask
    code, message = spec.input_error
    return replace(
        ask, request={**(ask.request or {}), INPUT_ERROR: {"code": code, "message": message}}
    )


def chunks(inputs: Iterable[InputSpec], size: int) -> Iterator[list[InputSpec]]:
    return _sized(inputs, size, size)


def _sized(inputs: Iterable[InputSpec], first: int, rest: int) -> Iterator[list[InputSpec]]:
    chunk: list[InputSpec] = []
    size = first
    for spec in inputs:
        chunk.append(spec)
        if len(chunk) == size:
            yield chunk
            chunk, size = [], rest
    if chunk:
        yield chunk


def _with_last(
    parts: Iterator[list[InputSpec]],
) -> Iterator[tuple[list[InputSpec], bool]]:
    """Each part, and whether it is the last: the last chunk clears the lease in its commit."""
    current = next(parts, None)
    while current is not None:
        following = next(parts, None)
        yield current, following is None
        current = following
