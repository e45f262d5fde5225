"""Submit: validate, store inputs, insert job + items in ONE transaction, commit, THEN publish."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.dispatch import DispatchError, Publisher
from jobs.errors import RequestError
from jobs.extraction import build_extraction_prompt, check_extraction
from jobs.sources import DOCUMENT_EXTENSIONS, IMAGE_EXTENSIONS, InputSpec, expand_sources
from jobs.states import ItemStatus, JobKind, JobStatus
from jobs.sweeper import mark_dispatched
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
    fingerprint = _fingerprint(request)
    if request.idempotency_key:
        existing = _find_by_key(session_factory, request.idempotency_key, fingerprint)
        if existing is not None:
            return existing
    extensions = DOCUMENT_EXTENSIONS if request.kind == JobKind.extract else IMAGE_EXTENSIONS
    inputs = expand_sources(request.sources, blobs=blobs, extensions=extensions)
    for spec in inputs:
        if spec.prompt is not None:
            check_prompt(spec.prompt, max_prompt_chars, where=spec.source)
    stored = _store_inputs(inputs, blobs)
    job, items = build_job(request, inputs, stored, fingerprint=fingerprint)
    try:
        with session_factory.begin() as session:
            add_job(session, job, items)
    except IntegrityError:
        if request.idempotency_key:  # lost a race with the same key
            found = _find_by_key(session_factory, request.idempotency_key, fingerprint)
            if found is not None:
                return found
        raise
    log.info("job submitted job=%s kind=%s items=%d", job.id, job.kind, len(items))
    dispatched = dispatch_job(
        session_factory, publisher, job.id, [i.id for i in items], request.batch_size
    )
    return SubmitResult(job_id=job.id, item_count=len(items), dispatched=dispatched)


def check_request(request: SubmitRequest, max_prompt_chars: int) -> None:
    """Everything about a request that can be refused before touching any input."""
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


def add_job(session: Session, job: Job, items: Sequence[Item]) -> None:
    session.add(job)
    session.flush()  # the job row first: items reference it
    session.add_all(items)


def _item_prompt(request: SubmitRequest, instructions: str | None) -> str:
    """The prompt the model gets: for extraction, built from the schema plus instructions."""
    if request.kind == JobKind.extract:
        assert request.schema is not None
        return build_extraction_prompt(request.schema, instructions)
    return instructions if instructions is not None else DEFAULT_CAPTION_PROMPT


def dispatch_job(
    session_factory: SessionFactory,
    publisher: Publisher,
    job_id: str,
    item_ids: list[str],
    batch_size: int,
) -> bool:
    """Publishes after commit; on a dead broker the rows stay queued for the sweeper.

    Each batch is marked dispatched as soon as it is out, so a sweep running meanwhile does not
    send it again.
    """
    for start in range(0, len(item_ids), batch_size):
        batch = item_ids[start : start + batch_size]
        try:
            publisher.publish(job_id, batch)
        except DispatchError as exc:
            log.warning("dispatch pending job=%s: %s", job_id, exc)
            return False
        mark_dispatched(session_factory, batch, now=utcnow())
    return True


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


def _store_inputs(inputs: Sequence[InputSpec], blobs: Blobs) -> list[tuple[str, str | None]]:
    """Uploads local files content-addressed; objects in a user's bucket are read in place."""

    def store(spec: InputSpec) -> tuple[str, str | None]:
        if spec.local_path is None:
            assert spec.uri is not None
            return spec.uri, None
        try:
            data = spec.local_path.read_bytes()
        except OSError as exc:
            raise RequestError(
                f"{spec.source}: cannot be read ({exc.strerror}).", code="source_unreadable"
            ) from exc
        try:
            blob = blobs.put_content_addressed(data, suffix=spec.local_path.suffix.lower())
        except StorageError as exc:
            raise RequestError(f"Storing {spec.source} failed: {exc}", code=exc.code) from exc
        return blob.uri, blob.sha256

    # Uploads are I/O bound; a few threads hide S3 round trips for large catalogues.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(store, inputs))


def _fingerprint(request: SubmitRequest) -> str:
    payload = {
        "kind": request.kind,
        "sources": list(request.sources),
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
