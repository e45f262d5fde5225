"""``extract``: one JSON object per image or document, decoding constrained by the user's JSON
Schema; a document's pages are kept (``item_pages``) and merged into the item's result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field

from jobs.errors import RequestError
from jobs.kinds.base import (
    Conversation,
    Generation,
    ItemAsk,
    KindDefaults,
    KindParams,
    job_generation,
)
from jobs.kinds.commands import DEFAULT_DPI, DEFAULT_PAGES
from jobs.limits import check_prompt
from jobs.outcome import Outcome
from model.engine import Turn

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem


class ExtractParams(KindParams):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)

    # Stored as "schema" in jobs.params (a BaseModel method has that name).
    output_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    instructions: str | None = None
    pages: str = DEFAULT_PAGES
    dpi: int = DEFAULT_DPI


class Extract(KindDefaults[ExtractParams]):
    name: ClassVar[str] = "extract"
    params_type = ExtractParams

    reads_documents: ClassVar[bool] = True

    def check(self, params: ExtractParams, *, max_prompt_chars: int) -> None:
        from jobs.extraction import check_extraction

        if params.output_schema is None:
            raise RequestError("Extraction needs a JSON Schema (--schema).", code="schema_missing")
        if params.instructions is not None:
            check_prompt(params.instructions, max_prompt_chars, where="--prompt")
        check_extraction(params.output_schema, params.pages, params.dpi)

    def document_rendering(self, params: ExtractParams) -> tuple[str, int] | None:
        return (params.pages, params.dpi)

    def default_max_new_tokens(self, params: ExtractParams, configured: int) -> int:
        """From the schema: the longest output it allows (capped), so real documents do not
        truncate on the default; the engine shrinks it to what the context leaves."""
        from model.errors import SchemaError
        from model.schema import default_max_new_tokens

        try:
            return default_max_new_tokens(self._schema(params))
        except SchemaError:  # refused by check() with the reason; any number will do here
            return configured

    def job_prompt(self, params: ExtractParams) -> str | None:
        from jobs.extraction import build_extraction_prompt

        return build_extraction_prompt(self._schema(params), params.instructions)

    def item_ask(
        self,
        params: ExtractParams,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        from jobs.extraction import build_extraction_prompt

        if prompt is None:
            return ItemAsk()
        check_prompt(prompt, max_prompt_chars, where=where)
        return ItemAsk(prompt=build_extraction_prompt(self._schema(params), prompt))

    def generation(
        self, params: ExtractParams, item: ClaimedItem, *, configured: int
    ) -> Generation:
        return job_generation(params, configured, self._schema(params))

    def first_requests(self, params: ExtractParams, item: ClaimedItem) -> list[Conversation]:
        return [(Turn("user", item.prompt or self.job_prompt(params) or ""),)]

    def outcome(
        self, params: ExtractParams, item: ClaimedItem, units: Sequence[Sequence[Outcome]]
    ) -> Outcome:
        from jobs.extraction import interpret_output, merge_pages

        generated = [g for (g,) in units]
        read = sum(g.tokens_in or 0 for g in generated)
        finished = all(g.finished for g in generated)
        pages = [
            g
            if g.failed
            else interpret_output(
                self._schema(params),
                g.text or "",
                finished=g.finished,
                number=g.page,
                tokens_out=g.tokens_out or 0,
            )
            for g in generated
        ]
        is_document = pages[0].page is not None
        kept = tuple(pages) if is_document else ()
        good = [p for p in pages if not p.failed]
        if not good:
            first = pages[0]
            return Outcome(
                error_code=first.error_code,
                error_message=first.error_message or first.error_code,
                pages=kept,
            )
        tokens = sum(p.tokens_out or 0 for p in pages)
        if not is_document:
            return Outcome(
                text=good[0].text,
                json=good[0].json,
                tokens_out=tokens,
                tokens_in=read,
                finished=finished,
            )
        merged = merge_pages(self._schema(params), [p.json for p in good])
        raw = "\n".join(p.text or "" for p in pages)
        return Outcome(
            text=raw, json=merged, tokens_out=tokens, tokens_in=read, finished=finished, pages=kept
        )

    @staticmethod
    def _schema(params: ExtractParams) -> dict[str, Any]:
        if params.output_schema is None:  # refused at submit; never in a stored job
            raise RequestError("Extraction needs a JSON Schema (--schema).", code="schema_missing")
        return params.output_schema
