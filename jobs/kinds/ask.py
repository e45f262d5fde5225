"""``ask``: questions about each image. Independent questions (the default) are answered in
batches over the same image; with ``conversation`` they are the turns of one chat, each answer
in the context of the next question."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.errors import RequestError
from jobs.kinds.base import (
    Conversation,
    Generation,
    ItemAsk,
    KindDefaults,
    KindParams,
    job_generation,
    listed_prompts,
)
from jobs.limits import check_prompt
from jobs.outcome import Outcome
from model.engine import Turn

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem

MAX_QUESTIONS = 64
CSV_FIELDS = (
    "item_id",
    "custom_id",
    "input",
    "status",
    "question_index",
    "question",
    "answer",
    "error_code",
    "error_message",
)


class AskParams(KindParams):
    questions: tuple[str, ...] = ()
    conversation: bool = False


class Ask(KindDefaults[AskParams]):
    name: ClassVar[str] = "ask"
    params_type = AskParams
    one_text: ClassVar[bool] = False  # one answer per question

    reads_documents: ClassVar[bool] = False

    def check(self, params: AskParams, *, max_prompt_chars: int) -> None:
        if not params.questions or len(params.questions) > MAX_QUESTIONS:
            raise RequestError(
                f"ask needs 1 to {MAX_QUESTIONS} questions (-q), not {len(params.questions)}.",
                code="invalid_questions",
            )
        for number, question in enumerate(params.questions, start=1):
            check_prompt(question, max_prompt_chars, where=f"question {number} (-q)")

    def item_ask(
        self,
        params: AskParams,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        return listed_prompts(
            prompt,
            extra,
            field="questions",
            noun="question",
            most=MAX_QUESTIONS,
            where=where,
            max_prompt_chars=max_prompt_chars,
        )

    def generation(self, params: AskParams, item: ClaimedItem, *, configured: int) -> Generation:
        return job_generation(params, configured, None)

    def questions(self, params: AskParams, item: ClaimedItem) -> list[str]:
        own = (item.request or {}).get("questions")
        return list(own) if own else list(params.questions)

    def first_requests(self, params: AskParams, item: ClaimedItem) -> list[Conversation]:
        questions = self.questions(params, item)
        if params.conversation:
            return [(Turn("user", questions[0]),)]
        return [(Turn("user", q),) for q in questions]

    def follow_up(
        self, params: AskParams, item: ClaimedItem, conversation: Conversation, answer: Outcome
    ) -> Conversation | None:
        questions = self.questions(params, item)
        asked = sum(1 for turn in conversation if turn.role == "user")
        if not params.conversation or answer.failed or asked >= len(questions):
            return None
        return (*conversation, Turn("assistant", answer.text or ""), Turn("user", questions[asked]))

    def outcome(
        self, params: AskParams, item: ClaimedItem, units: Sequence[Sequence[Outcome]]
    ) -> Outcome:
        (answers,) = units
        questions = self.questions(params, item)
        rows: list[dict[str, Any]] = []
        first_failure: tuple[int, Outcome] | None = None
        for index, question in enumerate(questions):
            got = answers[index] if index < len(answers) else None
            if got is None:  # a conversation stopped at an earlier failed turn
                got = Outcome(
                    error_code=first_failure[1].error_code if first_failure else "internal_error",
                    error_message="Not asked: an earlier turn of the conversation failed.",
                )
            if got.failed:
                first_failure = first_failure or (index, got)
                rows.append(
                    {
                        "question": question,
                        "answer": None,
                        "error_code": got.error_code,
                        "error_message": got.error_message,
                    }
                )
            else:
                rows.append({"question": question, "answer": got.text})
        tokens = sum(a.tokens_out or 0 for a in answers)
        read = sum(a.tokens_in or 0 for a in answers)
        finished = all(a.finished for a in answers)
        if first_failure is None:
            return Outcome(json=rows, tokens_out=tokens, tokens_in=read, finished=finished)
        index, failed = first_failure
        return Outcome(
            json=rows,
            tokens_out=tokens,
            tokens_in=read,
            error_code=failed.error_code,
            error_message=f"Question {index + 1}: {failed.error_message or failed.error_code}",
        )

    def csv_fields(self) -> tuple[str, ...]:
        return CSV_FIELDS

    def csv_rows(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        base = {k: row[k] for k in ("item_id", "custom_id", "input", "status")}
        answers = row["result"] if isinstance(row["result"], list) else []
        if not answers:
            yield {**base, "error_code": row["error_code"], "error_message": row["error_message"]}
            return
        for index, answer in enumerate(answers):
            yield {
                **base,
                "question_index": index,
                "question": answer.get("question"),
                "answer": answer.get("answer"),
                "error_code": answer.get("error_code"),
                "error_message": answer.get("error_message"),
            }
