"""``locate``: where in each image a referring expression points ("the red bus"), as a box in the
original image's pixels.

Each expression is asked in the form the checkpoint was trained on (``TEMPLATES``), the answer
is constrained to the box format (``[x1, y1, x2, y2]``, fixed decimals in [0, 1]) so it always
parses, and the box, normalised to the canvas the model saw, is mapped through what the
checkpoint's processor did to the image (``model.geometry``) to the image's own pixels.
Several expressions about one image are batched over the image encoded once, as ``ask``'s
questions are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jobs.errors import ItemErrorCode, RequestError
from jobs.kinds.base import (
    Conversation,
    Generation,
    ItemAsk,
    KindDefaults,
    KindParams,
    listed_prompts,
)
from jobs.kinds.templates import DEFAULT_TEMPLATE, TEMPLATES, Template
from jobs.limits import check_prompt
from jobs.outcome import Outcome
from model.engine import Turn

if TYPE_CHECKING:  # the lifecycle (SQLAlchemy) is the worker's, not --help's
    from jobs.lifecycle import ClaimedItem

MAX_EXPRESSIONS = 64
CSV_FIELDS = (
    "item_id",
    "custom_id",
    "input",
    "status",
    "expression_index",
    "expression",
    "text",
    "x1",
    "y1",
    "x2",
    "y2",
    "image_width",
    "image_height",
    "frame",
    "flags",
    "error_code",
    "error_message",
)


class LocateParams(KindParams):
    expressions: tuple[str, ...] = ()
    template: str = DEFAULT_TEMPLATE


class Locate(KindDefaults[LocateParams]):
    name: ClassVar[str] = "locate"
    params_type = LocateParams
    one_text: ClassVar[bool] = False  # one box per expression
    finds_boxes: ClassVar[bool] = True

    reads_documents: ClassVar[bool] = False

    def check(self, params: LocateParams, *, max_prompt_chars: int) -> None:
        if params.template not in TEMPLATES:
            raise RequestError(
                f"Unknown --template {params.template!r}; known: {', '.join(TEMPLATES)}.",
                code="invalid_template",
            )
        if not params.expressions or len(params.expressions) > MAX_EXPRESSIONS:
            raise RequestError(
                f"locate needs 1 to {MAX_EXPRESSIONS} expressions (-q), not "
                f"{len(params.expressions)}.",
                code="invalid_expressions",
            )
        for number, expression in enumerate(params.expressions, start=1):
            check_prompt(expression, max_prompt_chars, where=f"expression {number} (-q)")

    def default_max_new_tokens(self, params: LocateParams, configured: int) -> int:
        # A token is at least one character: the longest box, and the end token.
        return _template(params).max_chars + 1

    def item_ask(
        self,
        params: LocateParams,
        prompt: str | None,
        extra: Mapping[str, Any],
        *,
        where: str,
        max_prompt_chars: int,
    ) -> ItemAsk:
        return listed_prompts(
            prompt,
            extra,
            field="expressions",
            noun="expression",
            most=MAX_EXPRESSIONS,
            where=where,
            max_prompt_chars=max_prompt_chars,
        )

    def generation(self, params: LocateParams, item: ClaimedItem, *, configured: int) -> Generation:
        template = _template(params)
        return Generation(
            max_new_tokens=params.max_new_tokens or template.max_chars + 1,
            fit_to_context=params.budget_chosen,
            pattern=template.pattern,
        )

    def expressions(self, params: LocateParams, item: ClaimedItem) -> list[str]:
        own = (item.request or {}).get("expressions")
        return list(own) if own else list(params.expressions)

    def first_requests(self, params: LocateParams, item: ClaimedItem) -> list[Conversation]:
        template = _template(params)
        return [(Turn("user", template.ask(e)),) for e in self.expressions(params, item)]

    def outcome(
        self, params: LocateParams, item: ClaimedItem, units: Sequence[Sequence[Outcome]]
    ) -> Outcome:
        (answers,) = units
        template = _template(params)
        rows: list[dict[str, Any]] = []
        first_failure: tuple[int, str, str] | None = None
        for index, (expression, got) in enumerate(
            zip(self.expressions(params, item), answers, strict=True)
        ):
            row, failure = _located(expression, got, template)
            rows.append(row)
            if failure is not None and first_failure is None:
                first_failure = (index, *failure)
        tokens_out = sum(a.tokens_out or 0 for a in answers)
        tokens_in = sum(a.tokens_in or 0 for a in answers)
        if first_failure is None:
            finished = all(a.finished for a in answers)
            return Outcome(json=rows, tokens_out=tokens_out, tokens_in=tokens_in, finished=finished)
        index, code, message = first_failure
        return Outcome(
            json=rows,
            tokens_out=tokens_out,
            tokens_in=tokens_in,
            error_code=code,
            error_message=f"Expression {index + 1}: {message}",
        )

    def csv_fields(self) -> tuple[str, ...]:
        return CSV_FIELDS

    def csv_rows(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        base = {k: row[k] for k in ("item_id", "custom_id", "input", "status")}
        boxes = row["result"] if isinstance(row["result"], list) else []
        if not boxes:
            yield {**base, "error_code": row["error_code"], "error_message": row["error_message"]}
            return
        for index, found in enumerate(boxes):
            pixels = found.get("pixels") or [None] * 4
            frame = found.get("frame") or {}
            size = frame.get("source") or [None, None]
            yield {
                **base,
                "expression_index": index,
                "expression": found.get("expression"),
                "text": found.get("text"),
                **dict(zip(("x1", "y1", "x2", "y2"), pixels, strict=True)),
                "image_width": size[0],
                "image_height": size[1],
                "frame": frame.get("name"),
                "flags": " ".join(found.get("flags") or ()),
                "error_code": found.get("error_code"),
                "error_message": found.get("error_message"),
            }


def _template(params: LocateParams) -> Template:
    try:
        return TEMPLATES[params.template]
    except KeyError:  # refused at submit; never in a stored job
        raise RequestError(
            f"Unknown --template {params.template!r}.", code="invalid_template"
        ) from None


_NUMBER = re.compile(r"[01]\.[0-9]+")


def parse_box(text: str, template: Template) -> tuple[tuple[float, float, float, float], bool]:
    """The box in an answer, each pair put in order (x1 <= x2, y1 <= y2), and whether one had
    to be; ValueError for an answer not in the template's format."""
    if not re.fullmatch(template.pattern, text):
        raise ValueError("not a box")
    x1, y1, x2, y2 = (float(n) for n in _NUMBER.findall(text))
    ordered = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return ordered, ordered != (x1, y1, x2, y2)


def _located(
    expression: str, got: Outcome, template: Template
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """One expression's entry in the result, and its failure (code, message) if it failed."""
    from model.geometry import image_frame, to_source

    row: dict[str, Any] = {"expression": expression, "text": got.text}
    failure: tuple[str, str] | None = None
    if got.failed:
        failure = (got.error_code or "internal_error", got.error_message or got.error_code or "")
    elif not got.finished:
        failure = (
            ItemErrorCode.output_truncated,
            "The box reached --max-new-tokens before it was complete.",
        )
    else:
        try:
            box, reordered = parse_box(got.text or "", template)
        except ValueError:
            failure = (ItemErrorCode.output_invalid, f"The answer {got.text!r} is not a box.")
    if failure is not None:
        return {**row, "error_code": failure[0], "error_message": failure[1]}, failure
    flags: list[str] = []
    frame = got.frame
    source = got.source_size
    if frame is None:  # an engine that cannot say what its processor did
        frame = image_frame(source or (1, 1))
        flags.append("frame_unknown")
    if source is None:
        source = frame.fed
    # Half a step of the answer's last decimal: what the model cannot say more finely.
    located = to_source(box, frame, source, tolerance=0.5 * 10**-template.decimals)
    if reordered:
        flags.append("reordered")
    described = frame.describe()
    described["source"] = list(source)
    return {
        **row,
        "box": [round(v, 4) for v in located.normalised],
        "pixels": list(located.pixels),
        "frame": described,
        "flags": [*located.flags, *flags],
    }, None
