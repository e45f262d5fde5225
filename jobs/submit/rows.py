"""Writing a submitted job's item rows: a small job in one transaction, a big one in chunks,
each committed and then published at once, so workers start on the first batch while later rows
are still being written.

Every input is stored (content-addressed, so storing it again is harmless) BEFORE the
transaction that writes its rows opens: a transaction never waits on storage, so a slow upload
neither outlives PostgreSQL's idle-in-transaction limit nor holds SQLite's one write lock
(docs/design.md#no-slow-work-inside-a-transaction).

A big job holds a submit lease (``jobs.submit_lease_expires_at``) while its rows are written:
a heartbeat renews it while the producer works (uploads included), the last chunk clears it,
and until then the job is not finalised. If the producer stops (a crash, Ctrl-C), the sweeper
cancels the job once the lease runs out; an interrupted producer cancels it at once itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from jobs.db import Item, ItemInput, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.hooks import reached
from jobs.kinds.base import ItemAsk, Kind, KindParams
from jobs.kinds.registry import get_kind
from jobs.lifecycle import (
    abandon_submissions,
    continue_submission,
    finalise_jobs,
    renew_submission,
)
from jobs.states import ItemStatus
from jobs.submit.in_flight import InFlight
from jobs.submit.input_store import store_all_with, upload_threads
from jobs.submit.reuse_key import job_basis, reuse_key
from jobs.submit.sources import INPUT_ERROR, MORE_IMAGES, InputSpec
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
# How long a big submit's producer may go unheard (its heartbeat renews the lease every third
# of this while it lives) before the sweeper takes it for dead and cancels the job: generous,
# because cancelling a live submit is worse than noticing a dead one a few minutes late.
SUBMIT_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class Written:
    item_count: int
    dispatched: bool
    complete: bool  # False: the job was cancelled while its rows were written
    failed: int = 0  # items written failed: their inputs were refused on their own


def prepare_rows(
    job_id: str,
    request: SubmitRequest,
    inputs: Iterable[InputSpec],
    blobs: Blobs,
    *,
    max_prompt_chars: int,
) -> list[dict[str, Any]]:
    """The item rows of a small job, every input stored first: nothing here touches the
    database, so the transaction that writes them never waits on storage."""
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=upload_threads(blobs)) as pool:
        for chunk in chunks(inputs, _CHUNK):
            rows += item_rows(
                pool,
                job_id,
                request,
                chunk,
                blobs,
                first_seq=len(rows),
                max_prompt_chars=max_prompt_chars,
            )
    return rows


def stamp_queued(rows: list[dict[str, Any]], stamp: datetime | None) -> list[str]:
    """Stamps the queued rows dispatched at ``stamp`` (None: the sweeper will dispatch them)
    and returns their ids, the ones to publish; a row written failed has no message.

    Stamped after the inputs are stored, just before the rows' transaction: a stamp taken
    before a slow upload would make the rows look like a lost message to the sweeper the
    moment they commit, and they would be published twice."""
    queued = [row for row in rows if row["status"] == ItemStatus.queued]
    for row in queued:
        row["dispatched_at"] = stamp
    return [row["id"] for row in queued]


# The key of an item row (never a column) that holds its other inputs, [(uri, sha256)]:
# ``insert_rows`` writes them to ``item_inputs``, in the items' transaction.
OTHER_INPUTS = "_other_inputs"


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Adds ``rows`` to the caller's transaction, in multi-row INSERTs; an item's other inputs
    (``OTHER_INPUTS``) go to ``item_inputs`` with it."""
    others = [
        {"item_id": row["id"], "position": position, "uri": uri, "sha256": sha256}
        for row in rows
        for position, (uri, sha256) in enumerate(row.get(OTHER_INPUTS, ()), start=1)
    ]
    if others:
        rows = [{k: v for k, v in row.items() if k != OTHER_INPUTS} for row in rows]
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        session.execute(insert(Item), rows[start : start + _ROWS_PER_INSERT])
    for start in range(0, len(others), _ROWS_PER_INSERT):
        session.execute(insert(ItemInput), others[start : start + _ROWS_PER_INSERT])


def write_in_chunks(
    session_factory: SessionFactory,
    publisher: Publisher,
    job: Job,
    request: SubmitRequest,
    inputs: Iterable[InputSpec],
    blobs: Blobs,
    *,
    max_prompt_chars: int,
    flight: InFlight,
) -> Written:
    """Inserts ``job`` (not yet added to any session) and its items chunk by chunk, each chunk
    stored first, then written in its own transaction and published as soon as it commits
    (commit, then publish, chunk by chunk). Stops, writing nothing more, if the job is
    cancelled meanwhile. If this raises after the first chunk committed, the job is cancelled
    (best effort; else the sweeper does it once the lease runs out). An IntegrityError (the
    idempotency key taken) is raised by the first chunk, before anything is committed.
    ``flight``: the submit's registration, confirmed by every chunk's transaction and renewed
    by the heartbeat (docs/design.md#collecting-stored-inputs)."""
    batch_size = request.params.batch_size
    rest = max(batch_size, SUBMIT_CHUNK_ROWS // batch_size * batch_size)
    written, failed, dispatching, committed = 0, 0, True, False
    keeper = SubmitLeaseKeeper(session_factory, job.id, flight)
    try:
        with keeper, ThreadPoolExecutor(max_workers=upload_threads(blobs)) as pool:
            for chunk, last in _with_last(_sized(inputs, batch_size, rest)):
                rows = item_rows(
                    pool,
                    job.id,
                    request,
                    chunk,
                    blobs,
                    first_seq=written,
                    max_prompt_chars=max_prompt_chars,
                )
                reached("submit:inputs_stored")  # this chunk's, before its transaction
                stamp = utcnow()
                ids = stamp_queued(rows, stamp if dispatching else None)
                lease = None if last else utcnow() + SUBMIT_LEASE
                first = not committed
                if not _commit_chunk(session_factory, job, rows, flight, first=first, lease=lease):
                    log.warning("submit stopped job=%s: the job was cancelled", job.id)
                    return Written(written, dispatching, complete=False, failed=failed)
                if not committed and not last:
                    keeper.start()  # from here on the job exists and its lease must be kept
                committed = True
                written += len(rows)
                failed += len(rows) - len(ids)
                if dispatching and ids:
                    dispatching = dispatch_items(
                        session_factory,
                        publisher,
                        job.id,
                        ids,
                        model=job.model,
                        batch_size=batch_size,
                        stamp=stamp,
                    )
                if last and not ids:
                    # Nothing of this chunk is queued, so no worker's record will end the job.
                    finalise_jobs(session_factory, [job.id])
                if not last:
                    reached("submit:chunk_published")  # between two chunks: nothing held
    except BaseException:
        if committed:  # the keeper has stopped: nothing renews what is being cancelled
            _give_up(session_factory, job.id)
        raise
    return Written(written, dispatching, complete=True, failed=failed)


def _commit_chunk(
    session_factory: SessionFactory,
    job: Job,
    rows: list[dict[str, Any]],
    flight: InFlight,
    *,
    first: bool,
    lease: datetime | None,
) -> bool:
    """One chunk's transaction: the submit's registration confirmed (``submit_stalled`` if it
    lapsed), the job row (the first chunk inserts it, a later one renews or, as the last,
    clears its lease), then the rows. False: the job is no longer open, and nothing was
    written."""
    with session_factory.begin() as session:
        flight.confirm(session)
        if first:
            job.submit_lease_expires_at = lease
            session.add(job)
            session.flush()  # the job row first: items reference it
        elif not continue_submission(session, job.id, lease_until=lease):
            return False
        insert_rows(session, rows)
        reached("submit:chunk_written")  # inside the chunk's transaction
    return True


class SubmitLeaseKeeper:
    """Renews a big submit's lease every third of ``SUBMIT_LEASE`` from a background thread,
    while the producer stores and writes its chunks, so a slow upload never lets it lapse.

    A producer that dies (kill -9) or is paused stops renewing with it, and the sweeper
    abandons its job once the lease runs out; a renewal that fails (database down) is tried
    again at the next beat. The keeper stops by itself once the job is no longer open or its
    lease was cleared (the last chunk). Each beat renews the submit's registration
    (``submits_in_flight``) too, so a slow upload does not let that lapse either."""

    def __init__(self, session_factory: SessionFactory, job_id: str, flight: InFlight) -> None:
        self._session_factory = session_factory
        self._job_id = job_id
        self._flight = flight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SubmitLeaseKeeper:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="submit-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lease = SUBMIT_LEASE  # read once: tests shorten it
        while not self._stop.wait(lease.total_seconds() / 3):
            try:
                self._flight.renew()
                if not renew_submission(
                    self._session_factory, self._job_id, lease_until=utcnow() + lease
                ):
                    return
            except Exception as exc:  # the next beat tries again; the lease is the safety net
                log.warning("submit lease renewal failed job=%s: %s", self._job_id, exc)


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
    max_prompt_chars: int,
) -> list[dict[str, Any]]:
    """The item rows of ``chunk`` (its local inputs stored first), numbered from
    ``first_seq``, not yet stamped dispatched (``stamp_queued``). An input refused on its own
    is written ``failed`` with its code: it is terminal from the start, so the job finishes
    without any worker reading it."""
    kind = get_kind(request.kind)
    job_prompt = kind.job_prompt(request.params)
    basis = job_basis(kind.name, request.params.model_dump(by_alias=True))
    rows: list[dict[str, Any]] = []
    for offset, (spec, ((uri, sha256), others)) in enumerate(
        zip(chunk, store_all_with(pool, chunk, blobs), strict=True)
    ):
        ask = ask_for(kind, request.params, spec, max_prompt_chars)
        code, message = spec.input_error or (None, None)
        key = None
        if code is None:  # computed before MORE_IMAGES joins the request: the bytes count
            key = reuse_key(
                basis,
                prompt=ask.prompt if ask.prompt is not None else job_prompt,
                request=ask.request,
                input_uri=uri,
                input_sha256=sha256,
                other_sha256s=[other_sha for _, other_sha in others],
            )
        if others:  # the worker reads them from the request; item_inputs keeps them stored
            ask = replace(ask, request={**(ask.request or {}), MORE_IMAGES: [u for u, _ in others]})
        rows.append(
            {
                OTHER_INPUTS: others,
                "id": new_id(),
                "job_id": job_id,
                "seq": first_seq + offset,
                "custom_id": spec.custom_id,
                "source": spec.source,
                "input_uri": uri,
                "input_sha256": sha256,
                "prompt": ask.prompt,
                "request": ask.request,
                "status": ItemStatus.queued if code is None else ItemStatus.failed,
                "attempts": 0,
                "dispatched_at": None,
                "error_code": code,
                "error_message": message,
                "finished_at": None if code is None else utcnow(),
                "reuse_key": key,
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
    request too: a retried item is failed with it again by the worker, without reading
    anything."""
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
