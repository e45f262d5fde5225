"""Batched generation over tasks (one conversation about one unit: an image, or a page), with
failures isolated: an out-of-memory or failing batch is split in halves until what fails, fails
alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.errors import ItemErrorCode
from jobs.kinds.base import Generation
from jobs.lifecycle import ClaimedItem
from jobs.outcome import Outcome
from model.engine import Engine, GenerationRequest, Turn
from model.errors import DeviceOutOfMemoryError, InputError, SchemaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    item: ClaimedItem
    page: int | None  # None for a plain image
    image: Any  # PIL.Image.Image, RGB


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
    batch_size: int,
    max_new_tokens: int,
    json_schema: Mapping[str, Any] | None,
    fit_to_context: bool = False,
) -> list[Outcome]:
    """One outcome per task, in order; a page's outcome carries its page number."""
    budget = _Budget(max_new_tokens, json_schema, fit_to_context)
    results: list[Outcome] = []
    for start in range(0, len(tasks), batch_size):
        results += _generate(engine, tasks[start : start + batch_size], budget)
    return results


@dataclass(frozen=True)
class _Budget:
    max_new_tokens: int
    json_schema: Mapping[str, Any] | None
    fit_to_context: bool


def _generate(engine: Engine, tasks: Sequence[Task], budget: _Budget) -> list[Outcome]:
    if not tasks:
        return []
    requests = [GenerationRequest(t.unit.image, t.conversation) for t in tasks]
    try:
        results = engine.generate(
            requests,
            max_new_tokens=budget.max_new_tokens,
            json_schema=budget.json_schema,
            fit_to_context=budget.fit_to_context,
        )
    except SchemaError as exc:  # the job's schema, not any one item: every task fails alike
        return [
            Outcome(error_code=ItemErrorCode.schema_invalid, error_message=exc.message)
            for _ in tasks
        ]
    except DeviceOutOfMemoryError as exc:
        return _split(engine, tasks, budget, exc, ItemErrorCode.out_of_memory)
    except InputError as exc:
        return _split(engine, tasks, budget, exc, exc.code)
    except Exception as exc:
        log.exception("generation failed for a batch of %d; isolating", len(tasks))
        return _split(engine, tasks, budget, exc, ItemErrorCode.internal_error)
    return [
        Outcome(
            text=r.text,
            tokens_out=r.tokens_out,
            tokens_in=r.tokens_in,
            finished=r.finished,
            page=task.unit.page,
        )
        for task, r in zip(tasks, results, strict=True)
    ]


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
