"""Submit: validate, store inputs, insert job + items in ONE transaction, commit, THEN publish."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RequestError
from jobs.fingerprint import describe_inputs, fingerprint_of, fingerprint_streamed
from jobs.input_store import UPLOAD_THREADS, store_with
from jobs.kinds import ItemAsk, Kind, KindParams, get_kind
from jobs.limits import (
    DEFAULT_MAX_INPUT_BYTES,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_NAME_CHARS,
    check_option,
    check_text,
)
from jobs.metadata import check_metadata
from jobs.openai_batch import BatchFormat
from jobs.sources import (
    DOCUMENT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    INPUT_ERROR,
    InputSpec,
    iter_sources,
)
from jobs.states import ItemStatus, JobStatus
from storage import Blobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitRequest:
    """A request to run ``kind`` over ``sources``; ``params`` are the kind's typed parameters."""

    kind: str
    sources: Sequence[str]
    model: str
    params: KindParams
    name: str | None = None
    idempotency_key: str | None = None
    # --meta key=value labels (jobs.metadata), checked by jobs.metadata.check_metadata.
    metadata: Mapping[str, str] | None = None
    # A limit, not part of the job (never fingerprinted): LLAVA_BATCH_MAX_INPUT_BYTES.
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    # ``submit batch``: each source is a .jsonl file of requests (OpenAI-Batch or our manifest
    # format); an OpenAI file's model becomes the job's. None: sources as every kind reads them.
    input_format: BatchFormat | None = None
    # The user named the model (--model): it serves every input, whatever a file's lines name.
    model_chosen: bool = False

    @classmethod
    def of(
        cls,
        kind: str,
        sources: Sequence[str],
        model: str,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        default_max_new_tokens: int = 64,
        input_format: BatchFormat | None = None,
        model_chosen: bool = False,
        **params: Any,
    ) -> SubmitRequest:
        """Builds the kind's parameters from keywords (``prompt=``, ``schema=``, ``questions=``;
        None means "the default"); ones that do not validate are a request error. With no
        ``max_new_tokens`` the kind chooses (``default_max_new_tokens``: the setting)."""
        handler = get_kind(kind)
        given = {key: value for key, value in params.items() if value is not None}
        try:
            typed = handler.params_type.model_validate(given)
            if typed.max_new_tokens is None:
                chosen = handler.default_max_new_tokens(typed, default_max_new_tokens)
                typed = typed.model_copy(update={"max_new_tokens": chosen, "budget_chosen": True})
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or kind
            raise RequestError(
                f"{kind}: {where}: {problem['msg']}.", code="invalid_request"
            ) from None
        return cls(
            kind=handler.name,
            sources=list(sources),
            model=model,
            params=typed,
            name=name,
            idempotency_key=idempotency_key,
            metadata=metadata,
            max_input_bytes=max_input_bytes,
            input_format=input_format,
            model_chosen=model_chosen,
        )


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    item_count: int
    dispatched: bool
    existing: bool = False
    model: str = ""  # the job's: the one its workers serve


def submit_job(
    request: SubmitRequest,
    *,
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    max_prompt_chars: int,
) -> SubmitResult:
    """Two passes over the inputs, neither holding a big submission in memory: the first checks
    everything that can refuse the request (nothing is written before it ends); the second
    stores local inputs and inserts the rows in chunks, all in ONE transaction. Then publish."""
    kind = get_kind(request.kind)
    check_request(request, max_prompt_chars)
    extensions = DOCUMENT_EXTENSIONS if kind.reads_documents else IMAGE_EXTENSIONS
    sources, max_input_bytes, batch_format = (
        request.sources,
        request.max_input_bytes,
        request.input_format,
    )

    def expand() -> Iterator[InputSpec]:
        return iter_sources(
            sources,
            blobs=blobs,
            extensions=extensions,
            max_input_bytes=max_input_bytes,
            batch_format=batch_format,
        )

    checked = _check_inputs(request, expand(), max_prompt_chars)
    request = checked.request
    if request.idempotency_key:
        existing = _find_by_key(session_factory, request.idempotency_key, checked.fingerprint)
        if existing is not None:
            return existing
    inputs = checked.kept if checked.kept is not None else expand()
    stamp = utcnow()
    try:
        with session_factory.begin() as session:
            job, item_ids = write_job(
                session,
                request,
                inputs,
                blobs,
                fingerprint=checked.fingerprint,
                dispatched_at=stamp,
                max_prompt_chars=max_prompt_chars,
            )
    except IntegrityError:
        if request.idempotency_key:  # lost a race with the same key
            found = _find_by_key(session_factory, request.idempotency_key, checked.fingerprint)
            if found is not None:
                return found
        raise
    log.info("job submitted job=%s kind=%s items=%d", job.id, job.kind, len(item_ids))
    dispatched = dispatch_items(
        session_factory,
        publisher,
        job.id,
        item_ids,
        model=job.model,
        batch_size=request.params.batch_size,
        stamp=stamp,
    )
    return SubmitResult(
        job_id=job.id, item_count=len(item_ids), dispatched=dispatched, model=job.model
    )


# Inputs kept in memory from the checking pass for the writing one; a bigger submission is
# expanded again (its manifest read again, its prefix listed again) rather than held.
_KEPT_INPUTS = 200_000
# Inputs checked, described and stored together; item rows per multi-row INSERT.
_CHUNK = 512
_ROWS_PER_INSERT = 2_000


@dataclass(frozen=True)
class _Checked:
    request: SubmitRequest  # its model the one its inputs name, if any
    fingerprint: str
    kept: list[InputSpec] | None  # None: too many to keep


def _check_inputs(
    request: SubmitRequest, inputs: Iterator[InputSpec], max_prompt_chars: int
) -> _Checked:
    """The first pass: every input expanded and asked for (each refusal raised here), the
    fingerprint computed as it streams by; nothing is written."""
    kind = get_kind(request.kind)
    models: set[str] = set()
    kept: list[InputSpec] | None = []
    count = 0
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as described:
        for chunk in _chunks(inputs, _CHUNK):
            for spec in chunk:
                _ask_for(kind, request.params, spec, max_prompt_chars)
                if spec.model is not None:
                    models.add(spec.model)
            for description in describe_inputs(chunk, hashed=bool(request.idempotency_key)):
                separator = b", " if count else b""
                described.write(separator + json.dumps(description, sort_keys=True).encode())
                count += 1
            if kept is not None:
                kept.extend(chunk)
                if len(kept) > _KEPT_INPUTS:
                    kept = None
        request = _with_model_of(request, models)
        described.seek(0)
        fingerprint = fingerprint_streamed(request, described)
    return _Checked(request=request, fingerprint=fingerprint, kept=kept)


def write_job(
    session: Session,
    request: SubmitRequest,
    inputs: Iterable[InputSpec],
    blobs: Blobs,
    *,
    fingerprint: str,
    dispatched_at: datetime,
    max_prompt_chars: int,
) -> tuple[Job, list[str]]:
    """Adds a new job and its items to ``session`` (the caller's one transaction), the items
    already stamped dispatched, in multi-row INSERTs; local inputs are stored on the way.
    Returns the job and its item ids in order."""
    kind = get_kind(request.kind)
    job, _ = build_job(request, [], [], fingerprint=fingerprint)
    session.add(job)
    session.flush()  # the job row first: items reference it
    item_ids: list[str] = []
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for chunk in _chunks(inputs, _CHUNK):
            for spec, (uri, sha256) in zip(chunk, store_with(pool, chunk, blobs), strict=True):
                ask = _ask_for(kind, request.params, spec, max_prompt_chars)
                item_id = new_id()
                item_ids.append(item_id)
                rows.append(
                    {
                        "id": item_id,
                        "job_id": job.id,
                        "seq": len(item_ids) - 1,
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
            if len(rows) >= _ROWS_PER_INSERT:
                session.execute(insert(Item), rows)
                rows = []
    if rows:
        session.execute(insert(Item), rows)
    return job, item_ids


def _ask_for(
    kind: Kind[Any], params: KindParams, spec: InputSpec, max_prompt_chars: int
) -> ItemAsk:
    ask = kind.item_ask(
        params,
        spec.prompt,
        spec.extra,
        where=spec.where or spec.source,
        max_prompt_chars=max_prompt_chars,
    )
    return with_input_error(ask, spec)


def _chunks(inputs: Iterable[InputSpec], size: int) -> Iterator[list[InputSpec]]:
    chunk: list[InputSpec] = []
    for spec in inputs:
        chunk.append(spec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _with_model_of(request: SubmitRequest, named: set[str]) -> SubmitRequest:
    """The request, its model the one its inputs name (an OpenAI-Batch file's), if any and
    unless the user chose one."""
    if request.model_chosen:
        return request
    if len(named) > 1:
        raise RequestError(
            f"The inputs name {len(named)} models ({', '.join(sorted(named))}); a job has one.",
            code="model_mismatch",
        )
    return replace(request, model=named.pop()) if named else request


def with_input_error(ask: ItemAsk, spec: InputSpec) -> ItemAsk:
    """An input refused on its own (``InputSpec.input_error``) is recorded in its item's
    request: the worker fails the item with it, without reading anything."""
    if spec.input_error is None:
        return ask
    code, message = spec.input_error
    return replace(
        ask, request={**(ask.request or {}), INPUT_ERROR: {"code": code, "message": message}}
    )


def check_request(request: SubmitRequest, max_prompt_chars: int) -> None:
    """Everything about a request that can be refused before touching any input."""
    check_option("--batch-size", request.params.batch_size, "batch_size")
    if request.params.max_new_tokens is not None:  # None: the worker's setting applies
        check_option("--max-new-tokens", request.params.max_new_tokens, "max_new_tokens")
    if request.name is not None:
        check_text(request.name, what="--name", code="invalid_name", max_chars=MAX_NAME_CHARS)
    if request.idempotency_key is not None:
        check_text(
            request.idempotency_key,
            what="--idempotency-key",
            code="invalid_idempotency_key",
            max_chars=MAX_IDEMPOTENCY_KEY_CHARS,
        )
    if request.metadata is not None:
        check_metadata(request.metadata)
    get_kind(request.kind).check(request.params, max_prompt_chars=max_prompt_chars)


def build_job(
    request: SubmitRequest,
    inputs: Sequence[InputSpec],
    stored: Sequence[tuple[str, str | None]],
    asks: Sequence[ItemAsk] | None = None,
    *,
    fingerprint: str | None = None,
) -> tuple[Job, list[Item]]:
    """The rows of a new job (not yet added to any session)."""
    kind = get_kind(request.kind)
    job_id = new_id()
    params: dict[str, Any] = {
        **request.params.model_dump(by_alias=True),
        "fingerprint": fingerprint or fingerprint_of(request),
    }
    asks = asks if asks is not None else [ItemAsk()] * len(inputs)
    items = [
        Item(
            id=new_id(),
            job_id=job_id,
            seq=seq,
            custom_id=spec.custom_id,
            source=spec.source,
            input_uri=uri,
            input_sha256=sha256,
            prompt=ask.prompt,
            request=ask.request,
            status=ItemStatus.queued,
            attempts=0,
        )
        for seq, (spec, (uri, sha256), ask) in enumerate(zip(inputs, stored, asks, strict=True))
    ]
    job = Job(
        id=job_id,
        name=request.name,
        kind=kind.name,
        status=JobStatus.queued,
        prompt=kind.job_prompt(request.params),
        params=params,
        model=request.model,
        idempotency_key=request.idempotency_key,
    )
    if request.metadata:  # none: SQL NULL, not a JSON null
        job.job_metadata = dict(request.metadata)
    return job, items


def add_job(session: Session, job: Job, items: Sequence[Item], *, dispatched_at: datetime) -> None:
    """Adds the rows of a new job, its items already stamped dispatched: the caller publishes
    right after this commits, so a claim never meets a producer still writing to its rows."""
    for item in items:
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
        count = session.scalar(select(func.count()).where(Item.job_id == job.id)) or 0
        return SubmitResult(
            job_id=job.id, item_count=count, dispatched=True, existing=True, model=job.model
        )
