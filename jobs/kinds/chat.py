"""``chat``: each item is its own chat request about its image (or its several images, the
others in ``items.request["more_images"]``; or about nothing: text alone),
as an OpenAI-Batch line is: its messages (system, user and assistant turns), its token budget,
its sampling and stop strings, and an optional JSON Schema the answer must follow (or any JSON
object). One user turn is a caption or a question; several turns are a conversation; a schema
makes it an extraction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.errors import RequestError
from jobs.kinds.base import (
    Conversation,
    Generation,
    ItemAsk,
    KindDefaults,
    KindParams,
    generation_failed,
)
from jobs.limits import check_prompt, setting_bounds
from jobs.outcome import Outcome
from jobs.submit.openai_reader import sampling_fields
from model.engine import (
    ANY_JSON_OBJECT,
    ROLES,
    Sampling,
    Turn,
    check_conversation,
    is_any_json_object,
)

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem

MAX_MESSAGES = 64


class ChatParams(KindParams):
    """Job-wide defaults; each item's own request (``items.request``) says the rest."""


class Chat(KindDefaults[ChatParams]):
    name: ClassVar[str] = "chat"
    params_type = ChatParams

    reads_documents: ClassVar[bool] = False

    def check(self, params: ChatParams, *, max_prompt_chars: int) -> None:
        return None  # every request is checked on its own line (item_ask)

    def item_ask(
        self,
        params: ChatParams,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        """``extra`` holds the request: ``messages`` ([{"role", "text"}], the images going with
        the first user turn), optional ``max_tokens``, ``schema`` and ``sampling``
        (``temperature``, ``top_p``, ``seed``, ``stop``, as an OpenAI body names them)."""
        messages = extra.get("messages")
        if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
            raise RequestError(
                f"{where}: a request needs 1 to {MAX_MESSAGES} messages.", code="manifest_invalid"
            )
        turns: list[dict[str, str]] = []
        for number, message in enumerate(messages, start=1):
            role = message.get("role") if isinstance(message, dict) else None
            text = message.get("text") if isinstance(message, dict) else None
            if role not in ROLES or not isinstance(text, str):
                raise RequestError(
                    f"{where}: message {number} needs a role ({', '.join(ROLES)}) and text.",
                    code="manifest_invalid",
                )
            check_prompt(text, max_prompt_chars, where=f"{where}, message {number}")
            turns.append({"role": str(role), "text": text})
        try:
            check_conversation([Turn(t["role"], t["text"]) for t in turns])
        except ValueError as exc:
            raise RequestError(f"{where}: {exc}.", code="manifest_invalid") from None
        request: dict[str, Any] = {"messages": turns}
        max_tokens = extra.get("max_tokens")
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise RequestError(
                    f"{where}: max_tokens must be a positive integer.", code="manifest_invalid"
                )
            _, highest = setting_bounds("max_new_tokens")
            if max_tokens > highest:
                raise RequestError(
                    f"{where}: max_tokens {max_tokens} is over {highest}, the bound of "
                    "LLAVA_BATCH_MAX_NEW_TOKENS.",
                    code="invalid_option",
                )
            request["max_tokens"] = max_tokens
        schema = extra.get("schema")
        if is_any_json_object(schema):  # json_object: any object, no bounded schema to check
            request["schema"] = dict(ANY_JSON_OBJECT)
        elif schema is not None:
            from jobs.extraction import check_extraction

            if not isinstance(schema, dict):
                raise RequestError(f"{where}: the schema must be an object.", code="schema_invalid")
            try:
                check_extraction(schema, "all", 144)
            except RequestError as exc:
                raise RequestError(f"{where}: {exc.message}", code=exc.code) from None
            request["schema"] = schema
        sampling = extra.get("sampling")
        if sampling is not None:
            if not isinstance(sampling, dict):
                raise RequestError(f"{where}: sampling must be an object.", code="manifest_invalid")
            fields = sampling_fields(sampling, where)
            if fields:
                request["sampling"] = fields
        return ItemAsk(request=request)

    def generation(self, params: ChatParams, item: ClaimedItem, *, configured: int) -> Generation:
        own = item.request or {}
        given = own.get("max_tokens")
        schema = own.get("schema")
        fields = own.get("sampling") or {}
        sampling = Sampling(**{**fields, "stop": tuple(fields.get("stop", ()))})
        if given is not None:
            return Generation(int(given), schema, fit_to_context=False, sampling=sampling)
        if schema is not None and not is_any_json_object(schema):
            from model.schema import default_max_new_tokens

            budget = default_max_new_tokens(schema)
            return Generation(budget, schema, fit_to_context=True, sampling=sampling)
        return Generation(
            params.max_new_tokens or configured,
            schema,
            fit_to_context=params.budget_chosen,
            sampling=sampling,
        )

    def first_requests(self, params: ChatParams, item: ClaimedItem) -> list[Conversation]:
        messages = (item.request or {}).get("messages") or []
        return [tuple(Turn(m["role"], m["text"]) for m in messages)]

    def outcome(
        self, params: ChatParams, item: ClaimedItem, units: Sequence[Sequence[Outcome]]
    ) -> Outcome:
        ((generated,),) = units
        if generated.failed:
            return generation_failed(generated)
        schema = (item.request or {}).get("schema")
        if schema is None:
            return generated
        from jobs.extraction import interpret_output

        interpreted = interpret_output(
            schema,
            generated.text or "",
            finished=generated.finished,
            number=None,
            tokens_out=generated.tokens_out or 0,
        )
        return Outcome(
            text=interpreted.text,
            json=interpreted.json,
            tokens_out=generated.tokens_out,
            tokens_in=generated.tokens_in,
            finished=generated.finished,
            error_code=interpreted.error_code,
            error_message=interpreted.error_message,
        )
