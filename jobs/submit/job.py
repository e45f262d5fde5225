"""Submit: validate, store inputs, THEN insert job + items and commit, THEN publish.

A job of up to ``SUBMIT_CHUNK_ROWS`` items is written in ONE transaction; a bigger one in
chunks, each published as soon as it commits (``jobs.submit.rows``)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RequestError
from jobs.fleet import images_per_request, served_models
from jobs.hooks import reached
from jobs.input_policy import InputPolicy
from jobs.kinds.registry import get_kind
from jobs.lifecycle import finalise_jobs
from jobs.states import TERMINAL_JOB_STATES, ItemStatus
from jobs.submit import rows as submit_rows
from jobs.submit.fingerprint import describe_inputs, fingerprint_streamed
from jobs.submit.in_flight import IN_FLIGHT_LEASE, InFlight, in_flight
from jobs.submit.request import (
    SubmitRequest,
    SubmitResult,
    build_job,
    check_fits_context,
    check_request,
)
from jobs.submit.rows import (
    ask_for,
    chunks,
    insert_rows,
    prepare_rows,
    stamp_queued,
    with_input_error,
    write_in_chunks,
)
from jobs.submit.sources import (
    DOCUMENT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    InputSpec,
    iter_sources,
    refuse_images_over,
)
from storage import Blobs

__all__ = [
    "SubmitRequest",
    "SubmitResult",
    "add_job",
    "build_job",
    "check_request",
    "submit_job",
    "with_input_error",
    "write_job",
]

log = logging.getLogger(__name__)


def submit_job(
    request: SubmitRequest,
    *,
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    max_prompt_chars: int,
    in_flight_lease: timedelta = IN_FLIGHT_LEASE,
) -> SubmitResult:
    """Two passes over the inputs, neither holding a big submission in memory: the first checks
    everything that can refuse the request (nothing is written before it ends); the second
    stores local inputs and then inserts the rows (no transaction is open while inputs are
    stored). Up to ``SUBMIT_CHUNK_ROWS`` items: in ONE transaction, then publish. More: chunk
    by chunk, each published once it commits, so the first batch is on its way while later
    rows are written (``jobs.submit.rows``). An input refused on its own (empty, over the byte
    limit) does not refuse the request: its item is written failed."""
    kind = get_kind(request.kind)
    check_request(request, max_prompt_chars)
    extensions = DOCUMENT_EXTENSIONS if kind.reads_documents else IMAGE_EXTENSIONS
    sources, max_input_bytes, batch_format = (
        request.sources,
        request.max_input_bytes,
        request.input_format,
    )
    policy = InputPolicy(request.input_prefixes)

    def expand() -> Iterator[InputSpec]:
        return iter_sources(
            sources,
            blobs=blobs,
            extensions=extensions,
            max_input_bytes=max_input_bytes,
            batch_format=batch_format,
            policy=policy,
        )

    checked = _check_inputs(request, expand(), max_prompt_chars)
    if checked.request.model != request.model:  # the one an OpenAI Batch file names
        if not request.runs_here:
            _check_served(session_factory, checked.request.model, configured=request.model)
        check_fits_context(checked.request)
    request = checked.request
    if request.idempotency_key:
        existing = _find_by_key(session_factory, request.idempotency_key, checked.fingerprint)
        if existing is not None:
            return existing
    inputs = checked.kept if checked.kept is not None else expand()
    if not request.runs_here:  # a run's own engine judges its requests of several images
        model = request.model
        inputs = refuse_images_over(
            inputs, lambda: images_per_request(session_factory, model), model
        )
    write = _submit_in_chunks if checked.count > submit_rows.SUBMIT_CHUNK_ROWS else _submit_whole
    try:
        with in_flight(session_factory, in_flight_lease) as flight:
            args = (request, checked, inputs, session_factory, blobs, publisher)
            return write(*args, max_prompt_chars, flight)
    except IntegrityError:
        if request.idempotency_key:  # lost a race with the same key
            found = _find_by_key(session_factory, request.idempotency_key, checked.fingerprint)
            if found is not None:
                return found
        raise


def _submit_whole(
    request: SubmitRequest,
    checked: _Checked,
    inputs: Iterable[InputSpec],
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    max_prompt_chars: int,
    flight: InFlight,
) -> SubmitResult:
    """A job of at most a chunk of rows: every input stored, then ONE short transaction (it
    never waits on storage), then its messages."""
    job, _ = build_job(request, [], [], fingerprint=checked.fingerprint)
    rows = prepare_rows(job.id, request, inputs, blobs, max_prompt_chars=max_prompt_chars)
    reached("submit:inputs_stored")  # stored (or found stored), nothing written yet
    stamp = utcnow()
    queued = stamp_queued(rows, stamp)
    with session_factory.begin() as session:
        flight.confirm(session)
        write_job(session, job, rows)
    failed = len(rows) - len(queued)
    log.info("job submitted job=%s kind=%s items=%d failed=%d", job.id, job.kind, len(rows), failed)
    dispatched = True
    if queued:
        dispatched = dispatch_items(
            session_factory,
            publisher,
            job.id,
            queued,
            model=job.model,
            batch_size=request.params.batch_size,
            stamp=stamp,
        )
    else:  # every input was refused on its own: no worker's record will ever end this job
        finalise_jobs(session_factory, [job.id])
    return SubmitResult(
        job_id=job.id, item_count=len(rows), dispatched=dispatched, model=job.model, failed=failed
    )


def _submit_in_chunks(
    request: SubmitRequest,
    checked: _Checked,
    inputs: Iterable[InputSpec],
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    max_prompt_chars: int,
    flight: InFlight,
) -> SubmitResult:
    job, _ = build_job(request, [], [], fingerprint=checked.fingerprint)
    written = write_in_chunks(
        session_factory,
        publisher,
        job,
        request,
        inputs,
        blobs,
        max_prompt_chars=max_prompt_chars,
        flight=flight,
    )
    log.info(
        "job submitted job=%s kind=%s items=%d complete=%s",
        job.id,
        job.kind,
        written.item_count,
        written.complete,
    )
    return SubmitResult(
        job_id=job.id,
        item_count=written.item_count,
        dispatched=written.dispatched,
        model=job.model,
        complete=written.complete,
        failed=written.failed,
    )


# Bytes of inputs kept in memory from the checking pass for the writing one, each input counted
# by its description (its names, prompt and fields: what it holds) plus what the objects around
# them cost; a bigger submission is expanded again (its manifest read again, its prefix listed
# again) rather than held. A budget in bytes, not inputs: a count let a file of long requests
# be held whole. 128 MiB keeps what the count of 200,000 kept of plain manifest lines (about
# 660 bytes each here): at 64 MiB a 200k-line manifest was expanded twice, 159 s against 111 s
# (bench/submit_scale.py --manifest-lines 200000, side by side).
_KEPT_BYTES = 128 * 1024 * 1024
_KEPT_OVERHEAD = 512


@dataclass(frozen=True)
class _Checked:
    request: SubmitRequest  # its model the one its inputs name, if any
    fingerprint: str
    kept: list[InputSpec] | None  # None: too many to keep
    count: int  # how many inputs the checking pass saw


def _check_inputs(
    request: SubmitRequest, inputs: Iterator[InputSpec], max_prompt_chars: int
) -> _Checked:
    """The first pass: every input expanded and asked for (each refusal raised here), the
    fingerprint computed as it streams by; nothing is written."""
    kind = get_kind(request.kind)
    models: set[str] = set()
    kept: list[InputSpec] | None = []
    count = held = 0
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as described:
        for chunk in chunks(inputs, submit_rows._CHUNK):
            for spec in chunk:
                ask_for(kind, request.params, spec, max_prompt_chars)
                if spec.model is not None:
                    models.add(spec.model)
            for description in describe_inputs(chunk, hashed=bool(request.idempotency_key)):
                separator = b", " if count else b""
                encoded = json.dumps(description, sort_keys=True).encode()
                described.write(separator + encoded)
                count += 1
                held += len(encoded) + _KEPT_OVERHEAD
            if kept is not None:
                kept.extend(chunk)
                if held > _KEPT_BYTES:
                    kept = None
        request = _with_model_of(request, models)
        described.seek(0)
        fingerprint = fingerprint_streamed(request, described)
    return _Checked(request=request, fingerprint=fingerprint, kept=kept, count=count)


def write_job(session: Session, job: Job, rows: list[dict[str, Any]]) -> None:
    """Adds a new job (``build_job``'s, not yet added to any session) and its item rows
    (``prepare_rows``': inputs already stored, rows already stamped) to ``session``, the
    caller's one transaction, in multi-row INSERTs."""
    session.add(job)
    session.flush()  # the job row first: items reference it
    insert_rows(session, rows)


def _with_model_of(request: SubmitRequest, named: set[str]) -> SubmitRequest:
    """The request, its model the one its inputs name (an OpenAI-Batch file's), if any and
    unless the user chose one. A request that runs here (``run``) keeps the model this process
    serves: inputs naming another are refused, before anything is written or loaded."""
    if request.model_chosen:
        return request
    if len(named) > 1:
        raise RequestError(
            f"The inputs name {len(named)} models ({', '.join(sorted(named))}); a job has one.",
            code="model_mismatch",
        )
    if request.runs_here and named and named != {request.model}:
        (name,) = named
        raise RequestError(
            f"The requests name the model {name!r} and this run serves {request.model!r} "
            "(LLAVA_BATCH_MODEL); a file never chooses the model that is loaded. Run them on "
            f"{request.model!r} with --model {request.model}, or load {name!r} with "
            f"--model {name}.",
            code="model_not_served",
        )
    return replace(request, model=named.pop()) if named else request


def _check_served(session_factory: SessionFactory, named: str, *, configured: str) -> None:
    """Refuses a job for a model its file names (``body.model``) that no worker of this
    deployment serves (``jobs.fleet.served_models``): its items would wait for good. A name is
    only compared, never looked up (a hosted name such as ``gpt-4o-mini`` is never sought on a
    hub)."""
    served = served_models(session_factory, configured)
    if named in served:
        return
    raise RequestError(
        f"The requests name the model {named!r}, which no worker of this deployment serves "
        f"(served: {', '.join(served)}). Run them on {configured} with --model "
        f"{configured}, or start a worker for {named!r} (LLAVA_BATCH_MODEL={named}) first.",
        code="model_not_served",
    )


def add_job(session: Session, job: Job, items: Sequence[Item], *, dispatched_at: datetime) -> None:
    """Adds the rows of a new job, its queued items already stamped dispatched: the caller
    publishes them right after this commits, so a claim never meets a producer still writing
    to its rows. (An item written failed has no message.)"""
    for item in items:
        if item.status == ItemStatus.queued:
            item.dispatched_at = dispatched_at
    session.add(job)
    session.flush()  # the job row first: items reference it
    session.add_all(items)


def _find_by_key(
    session_factory: SessionFactory, key: str, fingerprint: str
) -> SubmitResult | None:
    with session_factory() as session:
        job = session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()
        if job is None:
            return None
        if job.params.get("fingerprint") != fingerprint:
            raise RequestError(
                f"The idempotency key {key!r} was already used for a different request.",
                code="idempotency_conflict",
            )
        lease = job.submit_lease_expires_at
        if lease is not None and (job.status in TERMINAL_JOB_STATES or lease < utcnow()):
            # Its submission stopped half-way (cancelled, or its producer died): returning it
            # would pass a part of the inputs off as the whole request.
            raise RequestError(
                f"The idempotency key {key!r} names job {job.id}, whose submission stopped "
                "before all its inputs were written (the job is, or will be, cancelled); "
                "submit again with a new key.",
                code="submit_incomplete",
            )
        count = session.scalar(select(func.count()).where(Item.job_id == job.id)) or 0
        # A queued item without a dispatch stamp has no message: the publish that should have
        # sent it failed, and it waits for the sweeper.
        undispatched = session.scalar(
            select(Item.id)
            .where(
                Item.job_id == job.id,
                Item.status == ItemStatus.queued,
                Item.dispatched_at.is_(None),
            )
            .limit(1)
        )
        return SubmitResult(
            job_id=job.id,
            item_count=count,
            dispatched=undispatched is None,
            existing=True,
            model=job.model,
            complete=lease is None,
        )
