"""``caption``: one sentence (or whatever the prompt asks) about each image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.kinds.base import (
    Conversation,
    Generation,
    ItemAsk,
    KindDefaults,
    KindParams,
    job_generation,
)
from jobs.limits import check_prompt
from jobs.outcome import Outcome
from model.engine import Turn

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem

DEFAULT_PROMPT = "Describe this image in one sentence."


class CaptionParams(KindParams):
    prompt: str = DEFAULT_PROMPT


class Caption(KindDefaults[CaptionParams]):
    name: ClassVar[str] = "caption"
    params_type = CaptionParams

    reads_documents: ClassVar[bool] = False

    def check(self, params: CaptionParams, *, max_prompt_chars: int) -> None:
        check_prompt(params.prompt, max_prompt_chars, where="--prompt")

    def job_prompt(self, params: CaptionParams) -> str | None:
        return params.prompt

    def item_ask(
        self,
        params: CaptionParams,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        if prompt is not None:
            check_prompt(prompt, max_prompt_chars, where=where)
        return ItemAsk(prompt=prompt)

    def generation(
        self, params: CaptionParams, item: ClaimedItem, *, configured: int
    ) -> Generation:
        return job_generation(params, configured, None)

    def first_requests(self, params: CaptionParams, item: ClaimedItem) -> list[Conversation]:
        return [(Turn("user", item.prompt or params.prompt),)]

    def outcome(
        self, params: CaptionParams, item: ClaimedItem, units: Sequence[Sequence[Outcome]]
    ) -> Outcome:
        ((generated,),) = units
        if generated.failed:
            return Outcome(
                error_code=generated.error_code,
                error_message=generated.error_message or generated.error_code,
            )
        return Outcome(
            text=generated.text,
            tokens_out=generated.tokens_out,
            tokens_in=generated.tokens_in,
            finished=generated.finished,
        )
