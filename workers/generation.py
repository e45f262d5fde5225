"""Batched generation over units (an image, or one page of a document), with failures isolated:
an out-of-memory or failing batch is split in halves until what fails, fails alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.errors import ItemErrorCode
from jobs.lifecycle import ClaimedItem
from model.engine import Engine, GenerationRequest
from model.errors import DeviceOutOfMemoryError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    item: ClaimedItem
    page: int | None  # None for a plain image
    image: Any  # PIL.Image.Image, RGB


@dataclass(frozen=True)
class Generated:
    unit: Unit
    text: str | None = None
    tokens_out: int | None = None
    finished: bool = True
    error_code: str | None = None
    error_message: str | None = None


def generate_units(
    engine: Engine,
    units: Sequence[Unit],
    *,
    batch_size: int,
    max_new_tokens: int,
    json_schema: Mapping[str, Any] | None,
) -> list[Generated]:
    results: list[Generated] = []
    for start in range(0, len(units), batch_size):
        results += _generate(engine, units[start : start + batch_size], max_new_tokens, json_schema)
    return results


def _generate(
    engine: Engine,
    units: Sequence[Unit],
    max_new_tokens: int,
    json_schema: Mapping[str, Any] | None,
) -> list[Generated]:
    if not units:
        return []
    requests = [GenerationRequest(image=u.image, prompt=u.item.prompt) for u in units]
    try:
        results = engine.generate(requests, max_new_tokens=max_new_tokens, json_schema=json_schema)
    except DeviceOutOfMemoryError as exc:
        return _split(engine, units, max_new_tokens, json_schema, exc, ItemErrorCode.out_of_memory)
    except InputError as exc:
        return _split(engine, units, max_new_tokens, json_schema, exc, exc.code)
    except Exception as exc:
        log.exception("generation failed for a batch of %d; isolating", len(units))
        return _split(engine, units, max_new_tokens, json_schema, exc, ItemErrorCode.internal_error)
    return [
        Generated(unit, text=r.text, tokens_out=r.tokens_out, finished=r.finished)
        for unit, r in zip(units, results, strict=True)
    ]


def _split(
    engine: Engine,
    units: Sequence[Unit],
    max_new_tokens: int,
    json_schema: Mapping[str, Any] | None,
    exc: Exception,
    code: str,
) -> list[Generated]:
    if len(units) == 1:
        if isinstance(exc, InputError):
            message = exc.message
        elif code == ItemErrorCode.out_of_memory:
            message = "The model ran out of device memory on this input alone."
        else:
            message = f"Generation failed: {type(exc).__name__}: {exc}"
        return [Generated(units[0], error_code=code, error_message=message)]
    middle = len(units) // 2
    log.warning("%s on a batch of %d; retrying halves", type(exc).__name__, len(units))
    return _generate(engine, units[:middle], max_new_tokens, json_schema) + _generate(
        engine, units[middle:], max_new_tokens, json_schema
    )
