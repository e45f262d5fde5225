"""A deterministic engine without torch, for fast tests of everything around the model.

Each result's text is ``f"caption of {width}x{height} image: {prompt}"`` (the request's image
size and its last user turn; ``f"answer without an image: {prompt}"`` for text alone;
``f"caption of {w1}x{h1} and {w2}x{h2} images: {prompt}"`` for several, in order; a later
turn of a conversation adds ``" (after N answers)"``), split on whitespace, cut to
``max_new_tokens`` words and re-joined with single spaces;
``tokens_out`` is its number of words and ``tokens_in`` the conversation's words plus one for
each image. ``max_images``: as a real engine's (None: any number). So a test can tell which
image and prompt produced which result, and that results come back in request order.

With ``json_schema``, each result's text is one compact JSON object valid against the schema and
the same for every request: every property (required or not) filled with a placeholder of its
type (see ``build_placeholder``); for ``ANY_JSON_OBJECT``, ``{}``. ``tokens_out`` is then the
text's length in characters; a ``max_new_tokens`` smaller than that gives the text cut there and
``finished=False``, like a real engine's truncated output. With ``pattern``, the text is the
pattern's shortest match (``model.patterns.build_pattern_example``), counted the same way.

A request's stop strings end its text as a real engine's do; its temperature, top_p and seed
change nothing here (the text stays deterministic).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from model.engine import (
    ANY_JSON_OBJECT,
    GenerationRequest,
    GenerationResult,
    cut_at_stop,
    is_any_json_object,
)
from model.errors import DeviceOutOfMemoryError
from model.patterns import build_pattern_example
from model.schema import DATE_PATTERN, prepare_schema

__all__ = ["FakeEngine", "build_placeholder"]


class FakeEngine:
    """Implements ``model.engine.Engine``.

    ``delay_s`` sleeps once per ``generate`` call (to test timeouts and leases).
    ``oom_when_batch_over``: batches larger than this raise ``DeviceOutOfMemoryError``, as a GPU
    would, so callers' batch splitting can be tested. ``calls`` records every batch size seen,
    including the ones that raised.
    """

    def __init__(
        self,
        name: str = "fake",
        delay_s: float = 0.0,
        *,
        oom_when_batch_over: int | None = None,
        max_images: int | None = None,
    ) -> None:
        self._name = name
        self.max_images = max_images
        self.delay_s = delay_s
        self.oom_when_batch_over = oom_when_batch_over
        self.calls: list[int] = []
        # Workers may share one engine across threads; keep the record consistent.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def revision(self) -> str | None:
        return None

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        fit_to_context: bool = False,  # no context to fit: every budget fits
        pattern: str | None = None,
    ) -> list[GenerationResult]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        # Like the real engine: an unsupported schema raises SchemaError before any work.
        bounded = None
        if json_schema is not None:
            free = is_any_json_object(json_schema)
            bounded = ANY_JSON_OBJECT if free else prepare_schema(json_schema)
        with self._lock:
            self.calls.append(len(requests))
        if self.oom_when_batch_over is not None and len(requests) > self.oom_when_batch_over:
            raise DeviceOutOfMemoryError(
                f"fake engine: batch of {len(requests)} is over {self.oom_when_batch_over}"
            )
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if pattern is not None:
            text = build_pattern_example(pattern)
            return [replace(_cut(text, max_new_tokens), tokens_in=_read(r)) for r in requests]
        if bounded is not None:
            text = json.dumps(build_placeholder(bounded), ensure_ascii=False)
            return [replace(_cut(text, max_new_tokens), tokens_in=_read(r)) for r in requests]
        return [self._caption(request, max_new_tokens) for request in requests]

    @staticmethod
    def _caption(request: GenerationRequest, max_new_tokens: int) -> GenerationResult:
        sizes = [f"{image.size[0]}x{image.size[1]}" for image in request.images]
        if not sizes:
            text = f"answer without an image: {request.prompt}"
        elif len(sizes) == 1:
            text = f"caption of {sizes[0]} image: {request.prompt}"
        else:
            text = f"caption of {' and '.join(sizes)} images: {request.prompt}"
        earlier = sum(1 for turn in request.conversation if turn.role == "assistant")
        if earlier:  # a later turn of a conversation: say how much context it had
            text += f" (after {earlier} answer{'s' if earlier > 1 else ''})"
        text, stopped = cut_at_stop(text, request.sampling.stop)
        every = text.split()
        words = every[:max_new_tokens]
        read = _read(request)
        return GenerationResult(
            text=" ".join(words),
            tokens_out=len(words),
            finished=stopped or len(every) <= max_new_tokens,  # cut short, as a real engine says
            tokens_in=read,
        )


def build_placeholder(schema: Mapping[str, Any]) -> Any:
    """A deterministic value valid against a bounded schema (from ``prepare_schema``).

    The first ``enum`` value; "2024-01-31" for a date; otherwise a string of ``minLength`` (at
    least 1) "x"s capped at ``maxLength``; a number or integer at 0 moved into
    ``[minimum, maximum]``; ``true``; ``minItems`` (at least 1, capped at ``maxItems``) items;
    an object with every property. For a list of types or ``anyOf``, the first; for another
    ``pattern``, a short match.
    """
    if "anyOf" in schema:
        return build_placeholder(schema["anyOf"][0])
    if "enum" in schema:
        return schema["enum"][0]
    raw = schema.get("type", "null")
    kind = raw if isinstance(raw, str) else raw[0]
    if kind == "string":
        if schema.get("pattern") == DATE_PATTERN:
            return "2024-01-31"
        if "pattern" in schema:
            return build_pattern_example(schema["pattern"])
        length = min(max(int(schema.get("minLength", 1)), 1), int(schema.get("maxLength", 1)))
        return "x" * length
    if kind in ("number", "integer"):
        value = min(max(0, schema.get("minimum", 0)), schema.get("maximum", 0))
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "array":
        count = min(max(int(schema.get("minItems", 1)), 1), int(schema.get("maxItems", 1)))
        return [build_placeholder(schema["items"]) for _ in range(count)]
    if kind == "object":  # any object (``ANY_JSON_OBJECT``) is the empty one
        return {name: build_placeholder(sub) for name, sub in schema.get("properties", {}).items()}
    return None


def _read(request: GenerationRequest) -> int:
    """Prompt "tokens": the conversation's words, and one for the image."""
    return len(request.images) + sum(len(turn.text.split()) for turn in request.conversation)


def _cut(text: str, max_new_tokens: int) -> GenerationResult:
    return GenerationResult(
        text=text[:max_new_tokens],
        tokens_out=min(len(text), max_new_tokens),
        finished=len(text) <= max_new_tokens,
    )
