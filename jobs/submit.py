"""Submit: validate, store inputs, insert job + items in ONE transaction, commit, THEN publish."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RequestError
from jobs.kinds import ItemAsk, KindParams, get_kind
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
    expand_sources,
)
from jobs.states import ItemStatus, JobStatus
from storage import Blobs, StorageError

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
    kind = get_kind(request.kind)
    check_request(request, max_prompt_chars)
    extensions = DOCUMENT_EXTENSIONS if kind.reads_documents else IMAGE_EXTENSIONS
    inputs = expand_sources(
        request.sources,
        blobs=blobs,
        extensions=extensions,
        max_input_bytes=request.max_input_bytes,
        batch_format=request.input_format,
    )
    request = _with_model_of(request, inputs)
    # A key matches what the sources resolve to, not the words typed (see _fingerprint).
    fingerprint = _fingerprint(request, inputs)
    if request.idempotency_key:
        existing = _find_by_key(session_factory, request.idempotency_key, fingerprint)
        if existing is not None:
            return existing
    asks = [
        kind.item_ask(
            request.params,
            spec.prompt,
            spec.extra,
            where=spec.where or spec.source,
            max_prompt_chars=max_prompt_chars,
        )
        for spec in inputs
    ]
    asks = [with_input_error(ask, spec) for ask, spec in zip(asks, inputs, strict=True)]
    stored = store_inputs(inputs, blobs)
    job, items = build_job(request, inputs, stored, asks, fingerprint=fingerprint)
    stamp = utcnow()
    try:
        with session_factory.begin() as session:
            add_job(session, job, items, dispatched_at=stamp)
    except IntegrityError:
        if request.idempotency_key:  # lost a race with the same key
            found = _find_by_key(session_factory, request.idempotency_key, fingerprint)
            if found is not None:
                return found
        raise
    log.info("job submitted job=%s kind=%s items=%d", job.id, job.kind, len(items))
    dispatched = dispatch_items(
        session_factory,
        publisher,
        job.id,
        [i.id for i in items],
        model=job.model,
        batch_size=request.params.batch_size,
        stamp=stamp,
    )
    return SubmitResult(
        job_id=job.id, item_count=len(items), dispatched=dispatched, model=job.model
    )


def _with_model_of(request: SubmitRequest, inputs: Sequence[InputSpec]) -> SubmitRequest:
    """The request, its model the one its inputs name (an OpenAI-Batch file's), if any and
    unless the user chose one."""
    if request.model_chosen:
        return request
    named = {spec.model for spec in inputs if spec.model is not None}
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
        "fingerprint": fingerprint or _fingerprint(request),
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


def store_inputs(inputs: Sequence[InputSpec], blobs: Blobs) -> list[tuple[str, str | None]]:
    """Uploads local files content-addressed; objects in a user's bucket are read in place."""

    budget = _ByteBudget(_BYTES_IN_FLIGHT)

    def store(spec: InputSpec) -> tuple[str, str | None]:
        if spec.content is not None:  # an inline input (a data: URI), already in memory
            try:
                blob = blobs.put_content_addressed(spec.content, suffix=spec.suffix)
            except StorageError as exc:
                raise RequestError(f"Storing {spec.source} failed: {exc}", code=exc.code) from exc
            return blob.uri, blob.sha256
        if spec.local_path is None:
            assert spec.uri is not None
            return spec.uri, None
        size = spec.size if spec.size is not None else spec.local_path.stat().st_size
        with budget.hold(size):
            data = _read_input(spec, size)
            try:
                blob = blobs.put_content_addressed(data, suffix=spec.local_path.suffix.lower())
            except StorageError as exc:
                raise RequestError(f"Storing {spec.source} failed: {exc}", code=exc.code) from exc
        return blob.uri, blob.sha256

    # Uploads are I/O bound; a few threads hide S3 round trips for large catalogues.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(store, inputs))


# Bytes of input held in memory by concurrent uploads; one larger input goes alone.
_BYTES_IN_FLIGHT = 64 * 1024 * 1024


def _read_input(spec: InputSpec, size: int) -> bytes:
    """The bytes of a local input, never more than the ``size`` it was checked at (its stat
    size, within LLAVA_BATCH_MAX_INPUT_BYTES): a file that grew meanwhile is refused, not read
    whole."""
    assert spec.local_path is not None
    try:
        with spec.local_path.open("rb") as f:
            data = f.read(size + 1)
    except OSError as exc:
        raise RequestError(
            f"{spec.source}: cannot be read ({exc.strerror}).", code="source_unreadable"
        ) from exc
    if len(data) != size:
        raise RequestError(
            f"{spec.source}: changed while it was being submitted; submit it again.",
            code="source_changed",
        )
    return data


class _ByteBudget:
    """Bounds the bytes that concurrent uploads hold at once."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._held == 0 or self._held + size <= self._limit)
            self._held += size
        try:
            yield
        finally:
            with self._changed:
                self._held -= size
                self._changed.notify_all()


def _fingerprint(request: SubmitRequest, inputs: Sequence[InputSpec] | None = None) -> str:
    """What an idempotency key stands for: the parameters, and each input by where it resolves to
    and by its content (a local file's sha256; an object's size and ETag).

    The same words typed in another folder, or a replaced file, are another request
    (``idempotency_conflict``), never the old job; files written again with the same bytes are the
    same request. Only a request with a key is ever looked up, so only it pays for reading its
    local inputs here (streamed); any other is described by sizes and mtimes.
    """
    described: list[Any] = (
        list(request.sources)
        if inputs is None
        else _describe_inputs(inputs, hashed=bool(request.idempotency_key))
    )
    payload = {
        "kind": request.kind,
        "sources": described,
        "params": request.params.model_dump(by_alias=True),
        "model": request.model,
        "name": request.name,
    }
    if request.metadata:  # only when given: keys of jobs without metadata stay as they were
        payload["metadata"] = dict(request.metadata)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _describe_inputs(inputs: Sequence[InputSpec], *, hashed: bool) -> list[Any]:
    def describe(spec: InputSpec) -> list[Any]:
        if spec.local_path is None:
            return [spec.uri, spec.size, spec.version, spec.prompt, spec.custom_id, spec.extra]
        content = _sha256_of(spec) if hashed else f"{spec.size}-{spec.version}"
        return [str(spec.local_path.resolve()), content, spec.prompt, spec.custom_id, spec.extra]

    if not hashed:
        return [describe(spec) for spec in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(describe, inputs))


def _sha256_of(spec: InputSpec) -> str:
    assert spec.local_path is not None
    digest = hashlib.sha256()
    try:
        with spec.local_path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
    except OSError as exc:
        raise RequestError(
            f"{spec.source}: cannot be read ({exc.strerror}).", code="source_unreadable"
        ) from exc
    return digest.hexdigest()


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
        count = len(list(session.scalars(select(Item.id).where(Item.job_id == job.id))))
        return SubmitResult(
            job_id=job.id, item_count=count, dispatched=True, existing=True, model=job.model
        )
