"""What a job kind is: typed parameters and one handler.

A handler checks a request at submit, says what each item asks (stored on the item), turns a
claimed item into generation requests (conversations about its image, or about each page of a
document), and turns what the model generated into the item's outcome. Everything that depends
on the kind lives in the kind's module; the rest of the system asks the handler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from jobs.errors import RequestError
from jobs.limits import check_prompt
from jobs.outcome import Outcome
from model.engine import GREEDY, Sampling, Turn

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem

Conversation = tuple[Turn, ...]

# The columns of ``results --format csv`` for a kind whose item is one row.
RESULT_FIELDS = (
    "item_id",
    "custom_id",
    "input",
    "status",
    "result",
    "error_code",
    "error_message",
)


@dataclass(frozen=True)
class Generation:
    """Settings of a generation call; tasks with equal settings (``key``) share model batches.

    ``fit_to_context``: the budget is a default the system chose, so the engine may shrink it to
    what the model's context leaves; a number the user gave is refused if it cannot fit.
    ``sampling`` is not part of the key: the engine honours it row by row, so requests of any
    sampling share a batch."""

    max_new_tokens: int
    json_schema: Mapping[str, Any] | None = None
    fit_to_context: bool = False
    sampling: Sampling = GREEDY
    # A regular expression the whole output must match (``Engine.generate``'s ``pattern``).
    pattern: str | None = None

    def key(self) -> tuple[Any, ...]:
        import json

        schema = None if self.json_schema is None else json.dumps(self.json_schema, sort_keys=True)
        return (self.max_new_tokens, schema, self.fit_to_context, self.pattern)


def job_generation(
    params: KindParams, configured: int, json_schema: Mapping[str, Any] | None = None
) -> Generation:
    """The generation settings of a kind whose every item is asked the same way."""
    return Generation(
        max_new_tokens=params.max_new_tokens or configured,
        json_schema=json_schema,
        fit_to_context=params.budget_chosen,
    )


class KindParams(BaseModel):
    """Parameters every kind has. ``max_new_tokens`` is resolved at submit (the user's value or
    the kind's default), so a worker never guesses it."""

    # Built at the first validation, not at import: --help lists the kinds, it validates none.
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    max_new_tokens: int | None = None  # None until submit resolves the kind's default
    # True when the kind chose max_new_tokens (no --max-new-tokens): the engine may shrink it
    # to what the model's context leaves, where a user's own number is refused if it cannot fit.
    budget_chosen: bool = False
    batch_size: int = 8  # items per message: dispatch's size, not the GPU's


P = TypeVar("P", bound=KindParams)


@dataclass(frozen=True)
class ItemAsk:
    """What one input asks, stored on its item: a prompt (``items.prompt``) and anything else
    the kind reads back at claim (``items.request``)."""

    prompt: str | None = None
    request: dict[str, Any] | None = None


class Kind(Protocol[P]):
    name: ClassVar[str]
    params_type: type[P]
    reads_documents: ClassVar[bool]  # PDFs are inputs, each selected page a unit
    # Whether an item's result is one text (or one JSON document): what ``results --format
    # txt`` writes to its item's sidecar file. A kind of several answers per item says no.
    one_text: ClassVar[bool]
    # Whether its results hold boxes in the image's pixels (``pixels`` in each entry of the
    # result's list): what ``results --crops`` cuts out (``jobs.crops``).
    finds_boxes: ClassVar[bool]

    def document_rendering(self, params: P) -> tuple[str, int] | None:
        """For a kind that reads documents: which pages, at which dpi; otherwise None."""
        ...

    def check(self, params: P, *, max_prompt_chars: int) -> None:
        """Refuses (RequestError) what the worker could never honour, before anything is
        written."""
        ...

    def default_max_new_tokens(self, params: P, configured: int) -> int:
        """Tokens to generate when the request names none (``configured``: the setting)."""
        ...

    def job_prompt(self, params: P) -> str | None:
        """``jobs.prompt``: what every item is asked unless it asks its own."""
        ...

    def item_ask(
        self,
        params: P,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        """What one input line asks (its manifest ``prompt`` and other fields)."""
        ...

    def generation(self, params: P, item: ClaimedItem, *, configured: int) -> Generation:
        """How to generate for ``item``: its token budget (``configured``: the worker's setting,
        for a job stored without one) and any schema constraining it."""
        ...

    def first_requests(self, params: P, item: ClaimedItem) -> list[Conversation]:
        """The conversations to generate for one unit (an image, or one page) of ``item``."""
        ...

    def follow_up(
        self, params: P, item: ClaimedItem, conversation: Conversation, answer: Outcome
    ) -> Conversation | None:
        """The next conversation once ``answer`` came for ``conversation``, or None."""
        ...

    def outcome(self, params: P, item: ClaimedItem, units: Sequence[Sequence[Outcome]]) -> Outcome:
        """The item's outcome from each unit's generations (in unit, then request, order)."""
        ...

    def csv_fields(self) -> tuple[str, ...]: ...

    def csv_rows(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        """The CSV rows of one results row."""
        ...


class KindDefaults(Generic[P]):
    """What most kinds answer alike: no documents, the configured budget, no job-wide prompt,
    one conversation turn, one results row per item. A kind overrides what differs."""

    one_text: ClassVar[bool] = True
    finds_boxes: ClassVar[bool] = False

    def document_rendering(self, params: P) -> tuple[str, int] | None:
        return None

    def default_max_new_tokens(self, params: P, configured: int) -> int:
        return configured

    def job_prompt(self, params: P) -> str | None:
        return None

    def follow_up(
        self, params: P, item: ClaimedItem, conversation: Conversation, answer: Outcome
    ) -> Conversation | None:
        return None

    def csv_fields(self) -> tuple[str, ...]:
        return RESULT_FIELDS

    def csv_rows(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        return one_row(row)


def one_row(row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """A results row as one CSV row: a JSON result is written as JSON text."""
    import json

    result = row["result"]
    if result is not None and not isinstance(result, str):
        row = {**row, "result": json.dumps(result, ensure_ascii=False)}
    yield dict(row)


def listed_prompts(
    prompt: str | None,
    extra: Mapping[str, Any],
    *,
    field: str,
    noun: str,
    most: int,
    where: str,
    max_prompt_chars: int,
) -> ItemAsk:
    """What an input line asks of a kind of several prompts per image (``ask``'s questions,
    ``locate``'s expressions): its list under ``field``, or its one ``prompt`` as a list of one;
    nothing when it gives neither (the job's own list then serves)."""
    given = extra.get(field)
    if prompt is not None and given is None:
        given = [prompt]  # one as "prompt", like the other kinds
    if given is None:
        return ItemAsk()
    if (
        not isinstance(given, list)
        or not given
        or len(given) > most
        or not all(isinstance(p, str) for p in given)
    ):
        raise RequestError(
            f'{where}: "{field}" must be a list of 1 to {most} strings.',
            code="manifest_invalid",
        )
    for number, text in enumerate(given, start=1):
        check_prompt(text, max_prompt_chars, where=f"{where}, {noun} {number}")
    return ItemAsk(request={field: list(given)})


def generation_failed(generated: Outcome) -> Outcome:
    return Outcome(
        error_code=generated.error_code,
        error_message=generated.error_message or generated.error_code,
        tokens_out=generated.tokens_out,
    )
