"""Submit: validate, store inputs, insert job + items in ONE transaction, commit, THEN publish."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RequestError
from jobs.extraction import build_extraction_prompt, check_extraction
from jobs.limits import (
    DEFAULT_MAX_INPUT_BYTES,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_NAME_CHARS,
    check_option,
    check_text,
    is_utf8,
)
from jobs.sources import DOCUMENT_EXTENSIONS, IMAGE_EXTENSIONS, InputSpec, expand_sources
from jobs.states import ItemStatus, JobKind, JobStatus
from storage import Blobs, StorageError

log = logging.getLogger(__name__)

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."


@dataclass(frozen=True)
class SubmitRequest:
    kind: JobKind
    sources: Sequence[str]
    model: str
    max_new_tokens: int
    batch_size: int
    prompt: str | None = None
    name: str | None = None
    idempotency_key: str | None = None
    schema: dict[str, Any] | None = None  # extraction only: the user's JSON Schema
    pages: str = "all"  # extraction only: which PDF pages
    dpi: int = 144  # extraction only: PDF rendering resolution
    # A limit, not part of the job (never fingerprinted): LLAVA_BATCH_MAX_INPUT_BYTES.
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    item_count: int
    dispatched: bool
    existing: bool = False


def submit_job(
    request: SubmitRequest,
    *,
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    max_prompt_chars: int,
) -> SubmitResult:
    check_request(request, max_prompt_chars)
    extensions = DOCUMENT_EXTENSIONS if request.kind == JobKind.extract else IMAGE_EXTENSIONS
    inputs = expand_sources(
        request.sources,
        blobs=blobs,
        extensions=extensions,
        max_input_bytes=request.max_input_bytes,
    )
    # A key matches what the sources resolve to, not the words typed (see _fingerprint).
    fingerprint = _fingerprint(request, inputs)
    if request.idempotency_key:
        existing = _find_by_key(session_factory, request.idempotency_key, fingerprint)
        if existing is not None:
            return existing
    for spec in inputs:
        if spec.prompt is not None:
            check_prompt(spec.prompt, max_prompt_chars, where=spec.source)
    stored = _store_inputs(inputs, blobs)
    job, items = build_job(request, inputs, stored, fingerprint=fingerprint)
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
        batch_size=request.batch_size,
        stamp=stamp,
    )
    return SubmitResult(job_id=job.id, item_count=len(items), dispatched=dispatched)


def check_request(request: SubmitRequest, max_prompt_chars: int) -> None:
    """Everything about a request that can be refused before touching any input."""
    check_option("--batch-size", request.batch_size, "batch_size")
    check_option("--max-new-tokens", request.max_new_tokens, "max_new_tokens")
    if request.name is not None:
        check_text(request.name, what="--name", code="invalid_name", max_chars=MAX_NAME_CHARS)
    if request.idempotency_key is not None:
        check_text(
            request.idempotency_key,
            what="--idempotency-key",
            code="invalid_idempotency_key",
            max_chars=MAX_IDEMPOTENCY_KEY_CHARS,
        )
    if request.prompt is not None or request.kind == JobKind.caption:
        check_prompt(request.prompt or DEFAULT_CAPTION_PROMPT, max_prompt_chars, where="--prompt")
    if request.kind == JobKind.extract:
        if request.schema is None:
            raise RequestError("Extraction needs a JSON Schema (--schema).", code="schema_missing")
        check_extraction(request.schema, request.pages, request.dpi)


def build_job(
    request: SubmitRequest,
    inputs: Sequence[InputSpec],
    stored: Sequence[tuple[str, str | None]],
    *,
    fingerprint: str | None = None,
) -> tuple[Job, list[Item]]:
    """The rows of a new job (not yet added to any session)."""
    job_id = new_id()
    params: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "batch_size": request.batch_size,
        "fingerprint": fingerprint or _fingerprint(request),
    }
    if request.kind == JobKind.extract:
        assert request.schema is not None
        params.update(schema=request.schema, pages=request.pages, dpi=request.dpi)
    items = [
        Item(
            id=new_id(),
            job_id=job_id,
            seq=seq,
            custom_id=spec.custom_id,
            source=spec.source,
            input_uri=uri,
            input_sha256=sha256,
            prompt=None if spec.prompt is None else _item_prompt(request, spec.prompt),
            status=ItemStatus.queued,
            attempts=0,
        )
        for seq, (spec, (uri, sha256)) in enumerate(zip(inputs, stored, strict=True))
    ]
    job = Job(
        id=job_id,
        name=request.name,
        kind=request.kind,
        status=JobStatus.queued,
        prompt=_item_prompt(request, request.prompt),
        params=params,
        model=request.model,
        idempotency_key=request.idempotency_key,
    )
    return job, items


def add_job(session: Session, job: Job, items: Sequence[Item], *, dispatched_at: datetime) -> None:
    """Adds the rows of a new job, its items already stamped dispatched: the caller publishes
    right after this commits, so a claim never meets a producer still writing to its rows."""
    for item in items:
        item.dispatched_at = dispatched_at
    session.add(job)
    session.flush()  # the job row first: items reference it
    session.add_all(items)


def _item_prompt(request: SubmitRequest, instructions: str | None) -> str:
    """The prompt the model gets: for extraction, built from the schema plus instructions."""
    if request.kind == JobKind.extract:
        assert request.schema is not None
        return build_extraction_prompt(request.schema, instructions)
    return instructions if instructions is not None else DEFAULT_CAPTION_PROMPT


def check_prompt(prompt: str, max_chars: int, *, where: str) -> None:
    if not prompt.strip():
        raise RequestError(f"{where}: the prompt is empty.", code="empty_prompt")
    if len(prompt) > max_chars:
        raise RequestError(
            f"{where}: the prompt has {len(prompt)} characters; the limit is {max_chars} "
            "(LLAVA_BATCH_MAX_PROMPT_CHARS).",
            code="prompt_too_long",
        )
    if "\x00" in prompt:
        raise RequestError(f"{where}: the prompt contains a NUL byte.", code="invalid_prompt")
    if not is_utf8(prompt):  # lone surrogates: undecodable bytes in an argument, or JSON escapes
        raise RequestError(f"{where}: the prompt is not valid UTF-8 text.", code="invalid_prompt")


def _store_inputs(inputs: Sequence[InputSpec], blobs: Blobs) -> list[tuple[str, str | None]]:
    """Uploads local files content-addressed; objects in a user's bucket are read in place."""

    budget = _ByteBudget(_BYTES_IN_FLIGHT)

    def store(spec: InputSpec) -> tuple[str, str | None]:
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
        "prompt": request.prompt,
        "schema": request.schema,
        "pages": request.pages,
        "dpi": request.dpi,
        "model": request.model,
        "max_new_tokens": request.max_new_tokens,
        "batch_size": request.batch_size,
        "name": request.name,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _describe_inputs(inputs: Sequence[InputSpec], *, hashed: bool) -> list[Any]:
    def describe(spec: InputSpec) -> list[Any]:
        if spec.local_path is None:
            return [spec.uri, spec.size, spec.version, spec.prompt, spec.custom_id]
        content = _sha256_of(spec) if hashed else f"{spec.size}-{spec.version}"
        return [str(spec.local_path.resolve()), content, spec.prompt, spec.custom_id]

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
        return SubmitResult(job_id=job.id, item_count=count, dispatched=True, existing=True)
