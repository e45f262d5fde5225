"""The option types the CLI's commands share, and building a request from them. A kind's own
options are declared in its module (``jobs.kinds.options``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.cli.context import Context
from jobs.errors import RequestError
from jobs.limits import MAX_PRIORITY, MIN_PRIORITY

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest


MaxNew = Annotated[
    int | None, typer.Option("--max-new-tokens", min=1, help="Tokens to generate per item.")
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Items per batch message.")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Priority = Annotated[
    int | None,
    typer.Option(
        "--priority",
        min=MIN_PRIORITY,
        max=MAX_PRIORITY,
        help="Higher first: a job's items are claimed before any of a lower priority on the "
        "same model (default 0; -100 to 100). Change it later with llava-batch priority.",
    ),
]
Retain = Annotated[
    str | None,
    typer.Option(
        "--retain",
        metavar="DURATION",
        help="Delete the job this long after it ends (30d, 12h), with its results and the "
        "inputs no other job uses (default: LLAVA_BATCH_RETAIN, kept until deleted).",
    ),
]
Reuse = Annotated[
    bool | None,
    typer.Option(
        "--reuse/--no-reuse",
        help="An item whose input bytes, prompt or questions, settings, model and revision "
        "equal an item an earlier job's model run answered gets a copy of that answer, "
        "without running the model (default: LLAVA_BATCH_REUSE, off).",
    ),
]
CompletionWindow = Annotated[
    str | None,
    typer.Option(
        "--completion-window",
        metavar="DURATION",
        help="Items not started within this (90m, 24h, 7d) end expired; the rest keep their "
        "results (default: LLAVA_BATCH_COMPLETION_WINDOW, none).",
    ),
]
DeliverTo = Annotated[
    str | None,
    typer.Option(
        "--deliver-to",
        metavar="TARGET",
        help="When the job ends, write its results and its errors file to this folder: "
        "s3://bucket/prefix/ or a local directory (the sweeper's, or run's), under <job id>/ "
        "unless TARGET names {job}; it may name {date} (UTC), and a schedule's {schedule}.",
    ),
]
DeliverFormat = Annotated[
    str | None,
    typer.Option(
        "--deliver-format",
        metavar="FORMAT",
        help="With --deliver-to: jsonl (default), csv, openai (the OpenAI Batch output and "
        "error files) or txt (one <input name>.txt per succeeded item, as results --format "
        "txt writes them).",
    ),
]
Notify = Annotated[
    str | None,
    typer.Option(
        "--notify",
        metavar="URL",
        help="When the job ends, POST a signed webhook here (https; docs/webhooks.md). "
        "Default: LLAVA_BATCH_NOTIFY_URL.",
    ),
]
ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="The job's model (default: LLAVA_BATCH_MODEL; submit batch: the one the file "
        "names). submit: only workers serving it take the job. run: the model this process "
        "loads; a file's model name never is.",
    ),
]


Name = Annotated[str | None, typer.Option(help="A name to find the job by.")]
IdemKey = Annotated[str | None, typer.Option(help="Same key, same job: safe to repeat.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")]
Timeout = Annotated[
    str | None,
    typer.Option(
        "--timeout",
        metavar="DURATION",
        help="With --wait or --watch: stop waiting after this long (30s, 10m, 2h) and exit 9; "
        "the job goes on.",
    ),
]
# Long enough for any wait a user means, short enough that a typo (``--timeout 9999d``) shows.
MAX_TIMEOUT_SECONDS = 31 * 86400


def parse_timeout(timeout: str | None, *, waiting: bool, waits_with: str) -> int | None:
    """``--timeout`` in seconds (None: none given); refused without ``waits_with`` (the option
    that waits: ``--wait`` or ``--watch``), which ``waiting`` says was given."""
    if timeout is None:
        return None
    if not waiting:
        raise RequestError(f"--timeout goes with {waits_with}.", code="invalid_option")
    from jobs.durations import parse_period

    return parse_period(timeout, option="--timeout", low=1, high=MAX_TIMEOUT_SECONDS)


Meta = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        metavar="KEY=VALUE",
        help="A label on the job, shown by status/jobs and matched by jobs --meta (repeat: up "
        "to 16; key up to 64 characters, value up to 512).",
    ),
]


def build_request(
    ctx: Context,
    kind: str,
    sources: list[str],
    max_new_tokens: int | None,
    batch_size: int | None,
    *,
    name: str | None = None,
    idempotency_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    model: str | None = None,
    priority: int | None = None,
    completion_window: str | None = None,
    retain: str | None = None,
    deliver_to: str | None = None,
    deliver_format: str | None = None,
    reuse: bool | None = None,
    notify: str | None = None,
    **params: Any,
) -> SubmitRequest:
    """A request for ``kind`` with the kind's own parameters (``params``; None: its default);
    ``metadata``: the parsed ``--meta`` options (``parse_meta``); ``model``: ``--model``;
    ``completion_window``: ``--completion-window`` as written (default: the setting);
    ``reuse``: ``--reuse``/``--no-reuse`` (None: the setting)."""
    from jobs.delivery.webhook import notify_url_of
    from jobs.durations import parse_retain, parse_window
    from jobs.submit.request import SubmitRequest

    if model is not None and not model.strip():
        raise RequestError("--model must not be empty.", code="invalid_option")
    window = (
        parse_window(completion_window)
        if completion_window is not None
        else ctx.settings.completion_window_seconds
    )
    retain_seconds = parse_retain(retain) if retain is not None else ctx.settings.retain_seconds
    notify_url = notify_url_of(notify, ctx.settings)
    return SubmitRequest.of(
        kind,
        sources,
        model or ctx.settings.model,
        model_chosen=model is not None,
        name=name,
        idempotency_key=idempotency_key,
        metadata=metadata,
        max_input_bytes=ctx.settings.max_input_bytes,
        input_prefixes=ctx.settings.input_prefixes,
        default_max_new_tokens=ctx.settings.max_new_tokens,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size or ctx.settings.message_size,
        priority=priority or 0,
        completion_window_seconds=window,
        retain_seconds=retain_seconds,
        output_uri=deliver_to,
        output_format=deliver_format,
        output_prefixes=ctx.settings.output_prefixes,
        reuse=ctx.settings.reuse if reuse is None else reuse,
        notify_url=notify_url,
        **params,
    )
