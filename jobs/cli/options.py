"""What the CLI's commands share: their option types, and building a request from them (the
``submit`` commands here in ``jobs``, the ``run`` commands in ``workers.cli``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.context import Context
from jobs.errors import RequestError
from jobs.states import JobKind
from jobs.submit.openai_reader import BatchFormat

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest


Sources = Annotated[
    list[str], typer.Argument(help="Files, directories, s3:// prefixes or .jsonl manifests.")
]
Prompt = Annotated[
    str | None, typer.Option(help="Instruction for every item (default: a one-sentence caption).")
]
MaxNew = Annotated[
    int | None, typer.Option("--max-new-tokens", min=1, help="Tokens to generate per item.")
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Items per batch message.")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="The model to run on (default: LLAVA_BATCH_MODEL, or the model an OpenAI-Batch "
        "file names); only workers serving it take the job.",
    ),
]


Name = Annotated[str | None, typer.Option(help="A name to find the job by.")]
IdemKey = Annotated[str | None, typer.Option(help="Same key, same job: safe to repeat.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")]
SchemaFile = Annotated[
    str, typer.Option("--schema", help="JSON Schema file the output must validate against.")
]
Pages = Annotated[str, typer.Option(help='PDF pages: "all", "first", or like "1-3" / "1,3,5-7".')]
Dpi = Annotated[int, typer.Option(help="PDF rendering resolution.")]
Instructions = Annotated[str | None, typer.Option(help="Extra instructions for the model.")]
Meta = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        metavar="KEY=VALUE",
        help="A label on the job, shown by status/jobs and matched by jobs --meta (repeat: up "
        "to 16; key up to 64 characters, value up to 512).",
    ),
]


Questions = Annotated[
    list[str] | None,
    typer.Option(
        "-q",
        "--question",
        help="A question for every image (repeat for several); a manifest line's "
        '"questions" replace them for its item.',
    ),
]
AsConversation = Annotated[
    bool,
    typer.Option(
        "--conversation",
        help="Ask the questions as the turns of one chat: each answer is in the next one's "
        "context.",
    ),
]


BatchFile = Annotated[
    str,
    typer.Argument(
        help="A .jsonl file of chat requests: OpenAI-Batch lines (custom_id, method, url, body) "
        'or our manifest lines ({"input", "messages", …}).'
    ),
]
BatchFileFormat = Annotated[
    BatchFormat,
    typer.Option(
        "--format",
        "--input-format",
        help="The file's format; auto: detected from its first line.",
    ),
]
BatchMaxNew = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens", min=1, help="Tokens per request that gives no max_tokens of its own."
    ),
]


def read_schema(path: str) -> dict[str, Any]:
    """The ``--schema`` file, parsed (imported here: submitting needs it, ``--help`` does not)."""
    from jobs.extraction import read_schema_file

    return read_schema_file(path)


def build_request(
    ctx: Context,
    kind: JobKind,
    sources: list[str],
    max_new_tokens: int | None,
    batch_size: int | None,
    *,
    name: str | None = None,
    idempotency_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    model: str | None = None,
    **params: Any,
) -> SubmitRequest:
    """A request for ``kind`` with the kind's own parameters (``params``; None: its default);
    ``metadata``: the parsed ``--meta`` options (``parse_meta``); ``model``: ``--model``."""
    from jobs.submit.request import SubmitRequest

    if model is not None and not model.strip():
        raise RequestError("--model must not be empty.", code="invalid_option")
    return SubmitRequest.of(
        kind,
        sources,
        model or ctx.settings.model,
        model_chosen=model is not None,
        name=name,
        idempotency_key=idempotency_key,
        metadata=metadata,
        max_input_bytes=ctx.settings.max_input_bytes,
        default_max_new_tokens=ctx.settings.max_new_tokens,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size or ctx.settings.batch_size,
        **params,
    )
