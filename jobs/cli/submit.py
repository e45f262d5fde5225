"""``llava-batch submit …``: one command per job kind, and ``submit batch`` for OpenAI-Batch
files. Submitting imports its machinery inside the commands, so ``--help`` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from jobs import views
from jobs.cli_fleet import is_served
from jobs.cli_options import (
    AsConversation,
    BatchFile,
    BatchFileFormat,
    BatchMaxNew,
    BatchSize,
    Dpi,
    IdemKey,
    Instructions,
    Json,
    MaxNew,
    Meta,
    ModelName,
    Name,
    Pages,
    Prompt,
    Questions,
    SchemaFile,
    Sources,
    Wait,
    build_request,
    read_schema,
)
from jobs.context import Context, open_context
from jobs.dispatch import CeleryPublisher
from jobs.metadata import parse_meta
from jobs.states import JobKind
from jobs.submit.openai_reader import BatchFormat

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest

submit_app = typer.Typer(help="Submit a job; prints its id.", no_args_is_help=True)


@submit_app.command("caption")
def submit_caption(
    sources: Sources,
    prompt: Prompt = None,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    name: Name = None,
    idempotency_key: IdemKey = None,
    meta: Meta = None,
    wait: Wait = False,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Caption images: files, directories, s3://bucket/prefix or a .jsonl manifest."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.caption,
        sources,
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
        metadata=parse_meta(meta),
        prompt=prompt,
        model=model,
    )
    _submit(ctx, request, wait=wait, json_out=json_out)


@submit_app.command("extract")
def submit_extract(
    sources: Sources,
    schema: SchemaFile,
    prompt: Instructions = None,
    pages: Pages = "all",
    dpi: Dpi = 144,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    name: Name = None,
    idempotency_key: IdemKey = None,
    meta: Meta = None,
    wait: Wait = False,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Extract schema-valid JSON from PDFs and images (one merged result per document)."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.extract,
        sources,
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
        metadata=parse_meta(meta),
        instructions=prompt,
        schema=read_schema(schema),
        pages=pages,
        dpi=dpi,
        model=model,
    )
    _submit(ctx, request, wait=wait, json_out=json_out)


@submit_app.command("ask")
def submit_ask(
    sources: Sources,
    questions: Questions = None,
    conversation: AsConversation = False,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    name: Name = None,
    idempotency_key: IdemKey = None,
    meta: Meta = None,
    wait: Wait = False,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Ask questions about images: one answer per question, or a multi-turn conversation."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.ask,
        sources,
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
        metadata=parse_meta(meta),
        questions=questions or [],
        conversation=conversation,
        model=model,
    )
    _submit(ctx, request, wait=wait, json_out=json_out)


@submit_app.command("batch")
def submit_batch(
    file: BatchFile,
    fmt: BatchFileFormat = BatchFormat.auto,
    max_new_tokens: BatchMaxNew = None,
    batch_size: BatchSize = None,
    name: Name = None,
    idempotency_key: IdemKey = None,
    meta: Meta = None,
    wait: Wait = False,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Run an OpenAI-Batch JSONL file (or a chat manifest): one item per request; the file's
    model is the job's."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.chat,
        [file],
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
        metadata=parse_meta(meta),
        input_format=fmt,
        model=model,
    )
    _submit(ctx, request, wait=wait, json_out=json_out)


def _submit(ctx: Context, request: SubmitRequest, *, wait: bool, json_out: bool) -> None:
    from jobs.submit.job import submit_job

    result = submit_job(
        request,
        session_factory=ctx.session_factory,
        blobs=ctx.blobs,
        publisher=CeleryPublisher(ctx.settings.broker_url, ctx.settings.queue),
        max_prompt_chars=ctx.settings.max_prompt_chars,
    )
    served = is_served(ctx, result.model)
    views.show_submitted(result, result.model, json_out=json_out, served=served)
    if wait:
        views.watch(ctx, result.job_id, json_out=json_out)
        raise typer.Exit(views.exit_code_for(ctx, result.job_id))
