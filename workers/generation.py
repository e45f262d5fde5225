"""Batched generation over tasks (one conversation about one unit: an image, or a page), with
failures isolated: an out-of-memory or failing batch is split in halves until what fails, fails
alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.errors import ItemErrorCode
from jobs.kinds.base import Generation
from jobs.lifecycle import ClaimedItem
from jobs.outcome import Outcome
from model.engine import Engine, GenerationRequest, Turn
from model.errors import DeviceOutOfMemoryError, InputError, SchemaError
from workers import metrics
from workers.microbatch import MicroBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    item: ClaimedItem
    page: int | None  # None for a plain image
    image: Any  # PIL.Image.Image, RGB; a tuple of them for several; None for text alone


@dataclass(frozen=True)
class Task:
    """One generation: ``conversation`` about ``unit``'s image; ``index`` orders the unit's
    tasks (the question number)."""

    unit: Unit
    index: int
    conversation: tuple[Turn, ...]
    generation: Generation


def generate_tasks(
    engine: Engine,
    tasks: Sequence[Task],
    *,
    micro_batch: MicroBatch,
    max_new_tokens: int,
    json_schema: Mapping[str, Any] | None,
    fit_to_context: bool = False,
    pattern: str | None = None,
) -> list[Outcome]:
    """One outcome per task, in order; a page's outcome carries its page number. Tasks go to
    the model ``micro_batch`` at a time, in an order that keeps padding small."""
    budget = _Budget(max_new_tokens, json_schema, fit_to_context, micro_batch, pattern)
    order = sorted(range(len(tasks)), key=lambda i: _padding_key(tasks[i]))
    results: list[Outcome | None] = [None] * len(tasks)
    start = 0
    while start < len(order):
        chosen = order[start : start + micro_batch.size_for(engine)]
        outcomes = _generate(engine, [tasks[i] for i in chosen], budget)
        for i, outcome in zip(chosen, outcomes, strict=True):
            results[i] = outcome
        start += len(chosen)
    return [r for r in results if r is not None]


def _padding_key(task: Task) -> tuple[float, int]:
    """Tasks alike in image shape (LLaVA-NeXT's tile count follows the aspect ratio) and prompt
    length share a batch, so left padding stays small."""
    first = task.unit.image[0] if isinstance(task.unit.image, tuple) else task.unit.image
    width, height = getattr(first, "size", (1, 1))
    aspect = round(width / max(height, 1), 1)
    return (aspect, sum(len(turn.text) for turn in task.conversation))


@dataclass(frozen=True)
class _Budget:
    max_new_tokens: int
    json_schema: Mapping[str, Any] | None
    fit_to_context: bool
    micro_batch: MicroBatch
    pattern: str | None = None


def _generate(engine: Engine, tasks: Sequence[Task], budget: _Budget) -> list[Outcome]:
    if not tasks:
        return []
    requests = [
        GenerationRequest(t.unit.image, t.conversation, t.generation.sampling) for t in tasks
    ]
    started = time.monotonic()
    try:
        results = engine.generate(
            requests,
            max_new_tokens=budget.max_new_tokens,
            json_schema=budget.json_schema,
            fit_to_context=budget.fit_to_context,
            pattern=budget.pattern,
        )
    except SchemaError as exc:  # the job's schema, not any one item: every task fails alike
        return [
            Outcome(error_code=ItemErrorCode.schema_invalid, error_message=exc.message)
            for _ in tasks
        ]
    except DeviceOutOfMemoryError as exc:
        budget.micro_batch.out_of_memory_at(len(tasks))
        return _split(engine, tasks, budget, exc, ItemErrorCode.out_of_memory)
    except InputError as exc:
        return _split(engine, tasks, budget, exc, exc.code)
    except Exception as exc:
        log.exception("generation failed for a batch of %d; isolating", len(tasks))
        return _split(engine, tasks, budget, exc, ItemErrorCode.internal_error)
    metrics.record_generate(
        time.monotonic() - started,
        tokens_out=sum(r.tokens_out for r in results),
        tokens_in=sum(r.tokens_in for r in results),
    )
    return [
        Outcome(
            text=r.text,
            tokens_out=r.tokens_out,
            tokens_in=r.tokens_in,
            finished=r.finished,
            page=task.unit.page,
            frame=r.frame,
            source_size=_source_size(task.unit.image),
        )
        for task, r in zip(tasks, results, strict=True)
    ]


def _source_size(image: Any) -> tuple[int, int] | None:
    """One image's own size: as ``model.images.decode_image`` recorded it (before a reduced
    scale), else as it is; None for several images or none."""
    if image is None or isinstance(image, tuple):
        return None
    from model.images import SOURCE_SIZE

    size = image.info.get(SOURCE_SIZE) if hasattr(image, "info") else None
    width, height = size or image.size
    return (int(width), int(height))


def _split(
    engine: Engine, tasks: Sequence[Task], budget: _Budget, exc: Exception, code: str
) -> list[Outcome]:
    if len(tasks) == 1:
        if isinstance(exc, InputError):
            message = exc.message
        elif code == ItemErrorCode.out_of_memory:
            message = "The model ran out of device memory on this input alone."
        else:
            message = f"Generation failed: {type(exc).__name__}: {exc}"
        return [Outcome(error_code=code, error_message=message, page=tasks[0].unit.page)]
    middle = len(tasks) // 2
    log.warning("%s on a batch of %d; retrying halves", type(exc).__name__, len(tasks))
    return _generate(engine, tasks[:middle], budget) + _generate(engine, tasks[middle:], budget)
