"""``llava-batch``, whole: the console script. The composition root for the commands that need a
model (``worker``, ``run …``), built on ``jobs.cli``'s app, which holds every other command and
never imports ``workers``.

A new kind's one-process command is one more ``@run_app.command`` here (its ``submit`` twin lives
in ``jobs.cli``). Imports stay light at module level, as in ``jobs.cli``: the pipeline, Celery and
the model load inside the commands that use them, so ``--help`` never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from jobs import views
from jobs.cli import (
    AsConversation,
    BatchSize,
    Dpi,
    Instructions,
    Json,
    MaxNew,
    Pages,
    Prompt,
    Questions,
    SchemaFile,
    Sources,
    app,
    build_request,
    read_schema,
)
from jobs.cli_errors import run_cli
from jobs.context import Context, open_context
from jobs.errors import RequestError
from jobs.states import JobKind

if TYPE_CHECKING:
    from jobs.submit import SubmitRequest

run_app = typer.Typer(
    help="Run a job in this process (no broker, no separate worker).", no_args_is_help=True
)
app.add_typer(run_app, name="run")


def main() -> NoReturn:
    run_cli(app)


@run_app.command("caption")
def run_caption(
    sources: Sources,
    prompt: Prompt = None,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    json_out: Json = False,
) -> None:
    """Caption images here and now: SQLite, local storage, an in-process worker."""
    ctx = open_context()
    request = build_request(
        ctx, JobKind.caption, sources, max_new_tokens, batch_size, prompt=prompt
    )
    _run_here(ctx, request, json_out=json_out)


@run_app.command("extract")
def run_extract(
    sources: Sources,
    schema: SchemaFile,
    prompt: Instructions = None,
    pages: Pages = "all",
    dpi: Dpi = 144,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    json_out: Json = False,
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
    )
    _run_here(ctx, request, json_out=json_out)


@run_app.command("ask")
def run_ask(
    sources: Sources,
    questions: Questions = None,
    conversation: AsConversation = False,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    json_out: Json = False,
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
    )
    _run_here(ctx, request, json_out=json_out)


def _run_here(ctx: Context, request: SubmitRequest, *, json_out: bool) -> None:
    from jobs.submit import check_request
    from workers.local import run_job_locally
    from workers.resources import build_resources

    # A bad flag is refused before the model loads, not after.
    check_request(request, ctx.settings.max_prompt_chars)
    views.warn_if_tiny(ctx.settings.model)
    res = build_resources(ctx.settings)
    views.err.print(f"loading model {ctx.settings.model} …")
    _ = res.engine
    result = run_job_locally(request, res, max_prompt_chars=ctx.settings.max_prompt_chars)
    views.show_run_results(ctx, result.job_id, json_out=json_out)
    raise typer.Exit(views.exit_code_for(ctx, result.job_id))


@app.command("worker")
def worker(
    pool: Annotated[
        str, typer.Option(help="solo (one process per GPU; CUDA-safe) or threads.")
    ] = "solo",
    concurrency: Annotated[int, typer.Option(min=1, help="Threads, with --pool threads.")] = 1,
    sweep_in_worker: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="Also run the sweeper.")
    ] = True,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Start a GPU worker: loads the model once, then processes batches from the queue."""
    if pool not in ("solo", "threads"):
        raise RequestError(
            "--pool must be solo or threads: CUDA does not survive fork.", code="invalid_option"
        )
    open_context()  # settings and schema are checked before the model loads
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
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "-Q",
        settings.queue,
        "--without-gossip",
        "--without-mingle",
    ]
    celery_app.worker_main(argv)
