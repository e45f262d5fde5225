"""What an idempotency key stands for: a digest of a request's parameters and of what its inputs
resolve to, computed from a list or streamed from their descriptions (same digest either way)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Protocol

from jobs.submit.input_store import local_threads, sha256_of
from jobs.submit.sources import InputSpec


class Fingerprinted(Protocol):
    """What a fingerprint reads of a request (``jobs.submit.request.SubmitRequest``): this module
    sits below the request, which fingerprints itself at ``build_job``."""

    @property
    def sources(self) -> Sequence[str]: ...

    @property
    def idempotency_key(self) -> str | None: ...

    def identity(self, sources: Any) -> dict[str, Any]:
        """The request's fingerprinted fields, with ``sources`` standing for its inputs."""
        ...


def fingerprint_of(request: Fingerprinted, inputs: Sequence[InputSpec] | None = None) -> str:
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
        else describe_inputs(inputs, hashed=bool(request.idempotency_key))
    )
    payload = request.identity(described)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# Stands for the inputs' descriptions in the payload, which are hashed as they are read back.
_SOURCES = "\x00sources\x00"


def fingerprint_streamed(request: Fingerprinted, described: IO[bytes]) -> str:
    """``fingerprint_of`` of the inputs whose descriptions ``described`` holds (each JSON, sorted
    keys, joined by ", "): the same digest, the whole JSON never built."""
    text = json.dumps(request.identity(_SOURCES), sort_keys=True)
    head, tail = text.split(json.dumps(_SOURCES))
    digest = hashlib.sha256(head.encode() + b"[")
    while block := described.read(1024 * 1024):
        digest.update(block)
    digest.update(b"]" + tail.encode())
    return digest.hexdigest()


def describe_inputs(inputs: Sequence[InputSpec], *, hashed: bool) -> list[Any]:
    def describe(spec: InputSpec) -> list[Any]:
        # A request's other images are its inputs too; one of a single image is described as
        # it always was, so the keys of earlier submits still stand for the same requests.
        own = describe_one(spec)
        return [*own, [describe_one(other) for other in spec.others]] if spec.others else own

    def describe_one(spec: InputSpec) -> list[Any]:
        if spec.local_path is None:
            return [spec.uri, spec.size, spec.version, spec.prompt, spec.custom_id, spec.extra]
        # A refused input (empty, over the limit) is never read, not even to be hashed.
        read = hashed and spec.input_error is None
        content = sha256_of(spec) if read else f"{spec.size}-{spec.version}"
        return [str(spec.local_path.resolve()), content, spec.prompt, spec.custom_id, spec.extra]

    if not hashed:
        return [describe(spec) for spec in inputs]
    with ThreadPoolExecutor(max_workers=local_threads()) as pool:
        return list(pool.map(describe, inputs))
