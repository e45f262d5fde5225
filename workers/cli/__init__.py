"""``llava-batch``, whole: the console script. The composition root for the commands that need a
model (``worker``, ``run …``), built on ``jobs.cli``'s app, which holds every other command and
never imports ``workers``.

A new kind's one-process command is one more ``@run_app.command`` here (its ``submit`` twin lives
in ``jobs.cli``). Imports stay light at module level, as in ``jobs.cli``: the pipeline, Celery and
the model load inside the commands that use them, so ``--help`` never imports torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from jobs import views
from jobs.cli import app
from jobs.cli_errors import run_cli
from jobs.cli_options import (
    AsConversation,
    BatchFile,
    BatchMaxNew,
    BatchSize,
    Dpi,
    Instructions,
    Json,
    MaxNew,
    ModelName,
    Pages,
    Prompt,
    Questions,
    SchemaFile,
    Sources,
    build_request,
    read_schema,
)
from jobs.context import Context, open_context
from jobs.errors import RequestError
from jobs.fleet import queue_for
from jobs.run_output import RunFormat
from jobs.states import JobKind
from jobs.submit.openai_reader import BatchFormat

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest

run_app = typer.Typer(
    help="Run a job in this process (no broker, no separate worker), or resume one: "
    "llava-batch run --resume JOB.",
    no_args_is_help=True,
    invoke_without_command=True,
)
app.add_typer(run_app, name="run")

RunFmt = Annotated[
    RunFormat | None,
    typer.Option(
        "--format",
        help="Results as items finish: text (SOURCE<TAB>RESULT; the default), jsonl, csv or "
        "openai.",
    ),
]
Output = Annotated[
    str | None, typer.Option("-o", "--output", help="Write the results to this file.")
]
Errors = Annotated[
    str | None,
    typer.Option("--errors", help="With --format openai: failed items go to this file."),
]


def main() -> NoReturn:
    run_cli(app)


@run_app.command("caption")
def run_caption(
    sources: Sources,
    prompt: Prompt = None,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Caption images here and now: SQLite, local storage, an in-process worker."""
    ctx = open_context()
    request = build_request(
        ctx, JobKind.caption, sources, max_new_tokens, batch_size, prompt=prompt, model=model
    )
    _run_here(ctx, request, json_out=json_out, fmt=fmt, output=output, errors=errors)


@run_app.command("extract")
def run_extract(
    sources: Sources,
    schema: SchemaFile,
    prompt: Instructions = None,
    pages: Pages = "all",
    dpi: Dpi = 144,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Extract schema-valid JSON here and now: SQLite, local storage, an in-process worker."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.extract,
        sources,
        max_new_tokens,
        batch_size,
        instructions=prompt,
        schema=read_schema(schema),
        pages=pages,
        dpi=dpi,
        model=model,
    )
    _run_here(ctx, request, json_out=json_out, fmt=fmt, output=output, errors=errors)


@run_app.command("ask")
def run_ask(
    sources: Sources,
    questions: Questions = None,
    conversation: AsConversation = False,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Ask questions about images here and now: SQLite, local storage, an in-process worker."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.ask,
        sources,
        max_new_tokens,
        batch_size,
        questions=questions or [],
        conversation=conversation,
        model=model,
    )
    _run_here(ctx, request, json_out=json_out, fmt=fmt, output=output, errors=errors)


@run_app.command("batch")
def run_batch(
    file: BatchFile,
    input_format: Annotated[
        BatchFormat,
        typer.Option(
            "--input-format", help="The file's format; auto: detected from its first line."
        ),
    ] = BatchFormat.auto,
    max_new_tokens: BatchMaxNew = None,
    batch_size: BatchSize = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
    model: ModelName = None,
) -> None:
    """Run an OpenAI-Batch JSONL file (or a chat manifest) here and now: one item per request;
    --format openai writes the OpenAI Batch output."""
    ctx = open_context()
    request = build_request(
        ctx,
        JobKind.chat,
        [file],
        max_new_tokens,
        batch_size,
        input_format=input_format,
        model=model,
    )
    _run_here(ctx, request, json_out=json_out, fmt=fmt, output=output, errors=errors)


def _run_here(
    ctx: Context,
    request: SubmitRequest,
    *,
    json_out: bool = False,
    fmt: RunFormat | None = None,
    output: str | None = None,
    errors: str | None = None,
) -> None:
    """Every ``run`` command's one path (``workers.run_command``): flags, output and inputs are
    checked and the job submitted before the model loads; results stream as items finish,
    progress shows on stderr, and Ctrl-C leaves the job resumable."""
    from workers.run_command import choose_format, run_request

    chosen = choose_format(fmt, json_out)
    run_request(ctx, request, fmt=chosen, output=output, errors=errors)


@run_app.callback()
def run_group(
    command: typer.Context,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="JOB",
            help="Finish a job an interrupted run left (a finished item never runs again); "
            "writes the job's whole output. Takes --format, -o, --errors and --json here.",
        ),
    ] = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
) -> None:
    """Run a job in this process (no broker, no separate worker), or resume one."""
    given = fmt is not None or output is not None or errors is not None or json_out
    if command.invoked_subcommand is not None:
        if resume is not None:
            raise RequestError(
                "--resume JOB takes no command: llava-batch run --resume JOB.",
                code="invalid_option",
            )
        if given:
            raise RequestError(
                "output options go after the command: llava-batch run caption SOURCE… "
                "--format jsonl -o FILE.",
                code="invalid_option",
            )
        return
    if resume is None:
        raise RequestError(
            "a command is missing: llava-batch run caption|extract|ask SOURCE…, or "
            "llava-batch run --resume JOB.",
            code="usage_error",
        )
    from workers.run_command import choose_format, resume_job

    ctx = open_context()
    resume_job(ctx, resume, fmt=choose_format(fmt, json_out), output=output, errors=errors)


@app.command("worker")
def worker(
    pool: Annotated[
        str,
        typer.Option(
            help="threads (messages worked on at once share the one resident model, so the "
            "next batch is claimed and decoded while one generates) or solo (one at a time)."
        ),
    ] = "threads",
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Slots, with --pool threads. Default: LLAVA_BATCH_WORKER_SLOTS."),
    ] = None,
    sweep_in_worker: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="Also run the sweeper.")
    ] = True,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    hostname: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--hostname",
            help="Celery node name; %h is the host name. Default: llava-batch-<pid>@%h, unique "
            "per worker process, so several workers on one host all answer inspect ping.",
        ),
    ] = None,
    events: Annotated[
        bool,
        typer.Option(
            "-E", "--events", help="Send Celery task events (for Flower or celery events)."
        ),
    ] = False,
) -> None:
    """Start a GPU worker: loads the model once, then processes batches from the queue."""
    if pool not in ("solo", "threads"):
        raise RequestError(
            "--pool must be solo or threads: CUDA does not survive fork.", code="invalid_option"
        )
    ctx = open_context()  # settings and schema are checked before the model loads
    slots = 1 if pool == "solo" else concurrency or ctx.settings.worker_slots
    # The resources split their budgets between the slots the pool really runs.
    os.environ["LLAVA_BATCH_WORKER_SLOTS"] = str(slots)
    from workers.celery_app import app as celery_app
    from workers.celery_app import settings
    from workers.tasks import get_resources

    # Load before consuming: the solo/threads pool runs tasks in this very process, so the
    # model stays resident, and a checkpoint that cannot load is one clear error, not a loop.
    views.err.print(f"loading model {settings.model} …")
    _ = get_resources().engine

    celery_app.conf.llava_batch_sweep = sweep_in_worker
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={slots}",
        f"--loglevel={loglevel}",
        "-Q",
        queue_for(settings.queue, settings.model),  # only the jobs of the model it serves
        "--without-gossip",
        "--without-mingle",
        f"--hostname={hostname or default_node_name()}",
    ]
    if events:
        argv.append("--task-events")
    celery_app.worker_main(argv)


def default_node_name() -> str:
    """``llava-batch-<pid>@%h``: two workers on one host (one per GPU) get two node names.
    Celery's own default, ``celery@%h``, makes them one node to ``inspect ping``."""
    return f"llava-batch-{os.getpid()}@%h"
