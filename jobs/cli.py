"""``llava-batch``: the command line. Only this module (and the worker bootstrap) reads settings.

Never imports torch: commands that need the model import ``workers`` inside the function.
Errors are one line on stderr with a meaningful exit code, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from jobs import views
from jobs.cli_schedules import schedule_app
from jobs.context import Context, open_context
from jobs.control import cancel_job, retry_job
from jobs.db import is_retryable
from jobs.dispatch import CeleryPublisher
from jobs.errors import JobsError
from jobs.extraction import read_schema_file
from jobs.maintenance import run_maintenance
from jobs.queries import find_job, list_recent_jobs, read_progress
from jobs.settings import UnknownSettingError
from jobs.states import JobKind
from jobs.submit import SubmitRequest, submit_job
from model.errors import ModelLoadError

app = typer.Typer(
    name="llava-batch",
    help="Batch captioning and extraction with LLaVA models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
submit_app = typer.Typer(help="Submit a job; prints its id.", no_args_is_help=True)
run_app = typer.Typer(
    help="Run a job in this process (no broker, no separate worker).", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")
app.add_typer(run_app, name="run")
app.add_typer(db_app, name="db")
app.add_typer(schedule_app, name="schedule")

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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (PostgreSQL or SQLite)."""
    from jobs.migrate import upgrade_database

    ctx = open_context(check_schema=False)
    revision = upgrade_database(ctx.engine)
    views.err.print(f"database at revision {revision}")


Name = Annotated[str | None, typer.Option(help="A name to find the job by.")]
IdemKey = Annotated[str | None, typer.Option(help="Same key, same job: safe to repeat.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")]
SchemaFile = Annotated[
    str, typer.Option("--schema", help="JSON Schema file the output must validate against.")
]
Pages = Annotated[str, typer.Option(help='PDF pages: "all", "first", or like "1-3" / "1,3,5-7".')]
Dpi = Annotated[int, typer.Option(help="PDF rendering resolution.")]
Instructions = Annotated[str | None, typer.Option(help="Extra instructions for the model.")]


@submit_app.command("caption")
def submit_caption(
    sources: Sources,
    prompt: Prompt = None,
    max_new_tokens: MaxNew = None,
    batch_size: BatchSize = None,
    name: Name = None,
    idempotency_key: IdemKey = None,
    wait: Wait = False,
    json_out: Json = False,
) -> None:
    """Caption images: files, directories, s3://bucket/prefix or a .jsonl manifest."""
    ctx = open_context()
    request = _request(
        ctx,
        JobKind.caption,
        sources,
        prompt,
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
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
    wait: Wait = False,
    json_out: Json = False,
) -> None:
    """Extract schema-valid JSON from PDFs and images (one merged result per document)."""
    ctx = open_context()
    request = _request(
        ctx,
        JobKind.extract,
        sources,
        prompt,
        max_new_tokens,
        batch_size,
        name=name,
        idempotency_key=idempotency_key,
        schema=read_schema_file(schema),
        pages=pages,
        dpi=dpi,
    )
    _submit(ctx, request, wait=wait, json_out=json_out)


def _submit(ctx: Context, request: SubmitRequest, *, wait: bool, json_out: bool) -> None:
    result = submit_job(
        request,
        session_factory=ctx.session_factory,
        blobs=ctx.blobs,
        publisher=CeleryPublisher(ctx.settings.broker_url, ctx.settings.queue),
        max_prompt_chars=ctx.settings.max_prompt_chars,
    )
    views.show_submitted(result, ctx.settings.model, json_out=json_out)
    if wait:
        views.watch(ctx, result.job_id, json_out=json_out)
        raise typer.Exit(views.exit_code_for(ctx, result.job_id))


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
    request = _request(ctx, JobKind.caption, sources, prompt, max_new_tokens, batch_size)
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
    request = _request(
        ctx,
        JobKind.extract,
        sources,
        prompt,
        max_new_tokens,
        batch_size,
        schema=read_schema_file(schema),
        pages=pages,
        dpi=dpi,
    )
    _run_here(ctx, request, json_out=json_out)


def _run_here(ctx: Context, request: SubmitRequest, *, json_out: bool) -> None:
    from workers.local import run_job_locally
    from workers.resources import build_resources

    views.warn_if_tiny(ctx.settings.model)
    res = build_resources(ctx.settings)
    views.err.print(f"loading model {ctx.settings.model} …")
    _ = res.engine
    result = run_job_locally(request, res, max_prompt_chars=ctx.settings.max_prompt_chars)
    views.show_run_results(ctx, result.job_id, json_out=json_out)
    raise typer.Exit(views.exit_code_for(ctx, result.job_id))


@app.command("status")
def status(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Show a progress bar until the job ends.")
    ] = False,
    json_out: Json = False,
) -> None:
    """Job status, counts per item state, items/s and ETA."""
    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
    if watch:
        views.watch(ctx, job_id, json_out=json_out)
        return
    with ctx.session_factory() as session:
        progress = read_progress(session, find_job(session, job_id))
    views.show_progress(progress, json_out=json_out)


@app.command("results")
def results(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    fmt: Annotated[
        views.ResultFormat, typer.Option("--format", help="Output format.")
    ] = views.ResultFormat.jsonl,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write to this file.")
    ] = None,
) -> None:
    """One row per item: item_id, custom_id, input, status, result, error_code, error_message."""
    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
        views.write_results(session, job_id, fmt, output)


@app.command("jobs")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, help="How many recent jobs.")] = 20,
    json_out: Json = False,
) -> None:
    """Recent jobs with their counts."""
    ctx = open_context()
    with ctx.session_factory() as session:
        views.show_jobs(list_recent_jobs(session, limit=limit), json_out=json_out)


@app.command("cancel")
def cancel(job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")]) -> None:
    """Cancel a job: queued items are cancelled, running ones finish, results are kept."""
    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
    views.err.print(f"job {job_id}: {cancel_job(ctx.session_factory, job_id)}")


@app.command("retry")
def retry(job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")]) -> None:
    """Re-queue only the failed items of a job."""
    ctx = open_context()
    with ctx.session_factory() as session:
        found = find_job(session, job)
        job_id, batch = found.id, int(found.params.get("batch_size") or ctx.settings.batch_size)
    publisher = CeleryPublisher(ctx.settings.broker_url, ctx.settings.queue)
    retried = retry_job(ctx.session_factory, publisher, job_id, batch_size=batch)
    views.err.print(
        f"job {job_id}: {len(retried.item_ids)} failed item(s) re-queued"
        + ("" if retried.dispatched else " (broker unreachable: the sweeper will dispatch)")
    )


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
        raise JobsError(
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


@app.command("sweep")
def sweep_command(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
) -> None:
    """Repair leases, re-publish lost messages, finalise jobs, fire due schedules."""
    import time

    ctx = open_context()
    publisher = CeleryPublisher(ctx.settings.broker_url, ctx.settings.queue)
    interval = float(ctx.settings.sweep_interval_seconds)
    backoff = 1.0
    while True:
        try:
            report = run_maintenance(ctx.session_factory, ctx.blobs, publisher, ctx.settings)
        except DBAPIError as exc:
            # A long-running repairer rides a database outage out, as the workers do.
            if once or not is_retryable(exc):
                raise
            views.err.print(
                f"sweep: the database is unreachable ({views.first_line(exc.orig)}); "
                f"retrying in {backoff:.0f}s"
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, max(interval, 60.0))
            continue
        backoff = 1.0
        views.err.print(f"sweep: {report.sweep}, scheduled jobs created: {report.jobs_created}")
        if once:
            return
        time.sleep(interval)


def _request(
    ctx: Context,
    kind: JobKind,
    sources: list[str],
    prompt: str | None,
    max_new_tokens: int | None,
    batch_size: int | None,
    **extra: Any,
) -> SubmitRequest:
    return SubmitRequest(
        kind=kind,
        sources=sources,
        prompt=prompt,
        model=ctx.settings.model,
        max_new_tokens=max_new_tokens or ctx.settings.max_new_tokens,
        batch_size=batch_size or ctx.settings.batch_size,
        max_input_bytes=ctx.settings.max_input_bytes,
        **extra,
    )


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LLAVA_BATCH_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="llava-batch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        views.fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except JobsError as exc:
        views.fail(f"{exc.message} [{exc.code}]", exc.exit_code)
    except ModelLoadError as exc:
        views.fail(f"the model cannot be loaded: {views.first_line(exc)} [model_load_error]", 7)
    except ValidationError as exc:
        views.fail(views.describe_settings_error(exc), 2)
    except UnknownSettingError as exc:
        views.fail(f"bad configuration: {exc} [invalid_settings]", 2)
    except OperationalError as exc:
        views.fail(
            f"the database is unreachable: {views.first_line(exc.orig)} [database_unavailable]", 5
        )
    except KeyboardInterrupt:
        views.fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("LLAVA_BATCH_DEBUG"):
            raise
        views.fail(
            f"internal error: {type(exc).__name__}: {views.first_line(exc)} "
            "(set LLAVA_BATCH_DEBUG=1 for a traceback)",
            1,
        )
    sys.exit(code if isinstance(code, int) else 0)
