"""``llava-batch``: the commands that need no model. Only the CLI (and the worker bootstrap)
reads settings.

``workers.cli`` builds on this app with the commands that need a model (``worker``, ``run``)
and is the console script: ``jobs`` never imports ``workers``. Start-up is kept light:
``--help`` and ``status`` import no alembic, jsonschema, pypdfium2 or llguidance (and never
torch), so what only submitting, scheduling or sweeping needs is imported inside those commands.
Errors leave through one boundary (``jobs.cli.errors``): one line, an exit status from the one
table (``jobs.errors.ExitCode``), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from jobs.cli import notifications, retention, serve, views
from jobs.cli.commands import Commands
from jobs.cli.context import open_context
from jobs.cli.groups import Group
from jobs.cli.options import Json, Timeout, parse_timeout
from jobs.cli.schedules import build_schedule_app
from jobs.cli.submit import build_submit_app
from jobs.errors import RETRYABLE_ERROR_CODES, RequestError
from jobs.limits import MAX_PRIORITY, MIN_PRIORITY
from jobs.metadata import parse_meta
from jobs.states import ItemStatus, ReviewState

# What a command does (the queries, SQLAlchemy, the broker) is imported in its body: building
# the app for ``--help`` or for one command imports none of it (tests/integration/cli/
# test_cli_startup.py).

T = TypeVar("T")

commands = Commands()


def build_app() -> typer.Typer:
    """The app of every command that needs no model; ``workers.cli`` adds the others."""
    app = typer.Typer(
        cls=Group,
        name="llava-batch",
        help="Batch captioning and extraction with LLaVA models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    db_app = typer.Typer(cls=Group, help="Database schema.", no_args_is_help=True)
    db_app.command("upgrade")(db_upgrade)
    app.add_typer(build_submit_app(), name="submit")
    app.add_typer(db_app, name="db")
    app.add_typer(build_schedule_app(), name="schedule")
    app.command("delete")(retention.delete)
    app.command("purge")(retention.purge)
    app.command("notifications")(notifications.notifications)
    app.command("serve")(serve.serve)
    return commands.add_to(app)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        views.out.print(f"llava-batch {version('llava-batch')}", markup=False)
        raise typer.Exit()


def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Batch captioning and extraction with LLaVA models."""


def db_upgrade() -> None:
    """Create or migrate the tables (PostgreSQL or SQLite)."""
    from jobs.migrate import upgrade_database

    ctx = open_context(check_schema=False)
    revision = upgrade_database(ctx.engine)
    views.err.print(f"database at revision {revision}")


@commands.command("status")
def status(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Show the progress until the job ends (a bar on a terminal, a line every few "
            "seconds otherwise), then the status.",
        ),
    ] = False,
    timeout: Timeout = None,
    json_out: Json = False,
    fmt: Annotated[
        views.StatusFormat,
        typer.Option(
            "--format",
            help="text, json (as --json) or openai: the job as an OpenAI Batch object.",
        ),
    ] = views.StatusFormat.text,
) -> None:
    """Job status, counts per item state, items/s, ETA, token usage and metadata; or the job as
    an OpenAI Batch object (--format openai)."""
    openai = fmt is views.StatusFormat.openai
    if openai and json_out:
        raise RequestError("--json goes with --format json, not openai.", code="invalid_option")
    json_out = json_out or fmt is views.StatusFormat.json
    seconds = parse_timeout(timeout, waiting=watch, waits_with="--watch")
    if not watch and not openai:  # the common case: plain SQL, no SQLAlchemy to import
        from jobs.cli.context import open_reading
        from jobs.cli.fleet import with_waiting
        from jobs.progress import find_job_row, live_workers, read_progress

        with open_reading() as (settings, reader):
            progress = read_progress(reader, find_job_row(reader, job))

            def served() -> bool:
                beat = settings.worker_heartbeat_seconds
                return live_workers(reader, progress.model, heartbeat_seconds=beat) > 0

            views.show_progress(with_waiting(progress, served), json_out=json_out)
        return
    from jobs.queries import find_job

    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
    if watch:  # the progress on stderr; then the job as it ended: a summary, or a batch object
        ended = views.watch(ctx, job_id, timeout=seconds)
        if not openai:
            views.show_progress(ended, json_out=json_out)
            return
    from jobs.openai_batch import batch_object

    with ctx.session_factory() as session:
        views.show_batch(batch_object(session, job_id))


@commands.command("results")
def results(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    fmt: Annotated[
        views.ResultFormat, typer.Option("--format", help="Output format.")
    ] = views.ResultFormat.jsonl,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="Write to this file (--format txt: into this folder, one file per item).",
        ),
    ] = None,
    errors: Annotated[
        str | None,
        typer.Option(
            "--errors",
            help="--format openai: write failed and cancelled items to this file (as an "
            "OpenAI batch error file); without it they follow the successes in the output.",
        ),
    ] = None,
    statuses: Annotated[
        list[ItemStatus] | None,
        typer.Option("--status", help="Only items in this state (repeat for several)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="--format txt: replace files already in the folder (without it, they are "
            "left as they are).",
        ),
    ] = False,
    reviewed: Annotated[
        ReviewState | None,
        typer.Option("--reviewed", help="Only items so reviewed (on the review page)."),
    ] = None,
    use_edits: Annotated[
        bool,
        typer.Option(
            "--use-edits",
            help="--format openai: answer with the reviewers' edits where there are some "
            "(an edited failed item is then a success).",
        ),
    ] = False,
    crops: Annotated[
        str | None,
        typer.Option(
            "--crops",
            metavar="DIR",
            help="A locate job: write each box found, cut out of its image, as a PNG into "
            "this folder (named after the item and the expression), instead of the results.",
        ),
    ] = None,
) -> None:
    """One row per item: item_id, custom_id, input, status, result, error_code, error_message,
    finish_reason, usage, and its review: decision, edited, reviewer, reviewed_at; or the
    OpenAI Batch output format (--format openai); or one .txt per succeeded item, its caption
    or answer, mirroring the input folders (--format txt)."""
    from jobs.queries import find_job

    ctx = open_context()
    if crops is not None:
        from jobs.crops import write_crops

        if (
            output
            or errors
            or statuses
            or overwrite
            or reviewed
            or use_edits
            or fmt is not views.ResultFormat.jsonl
        ):
            raise RequestError(
                "--crops writes images, not results: it takes no --format, -o, --errors, "
                "--status, --overwrite, --reviewed or --use-edits.",
                code="invalid_option",
            )

        with ctx.session_factory() as session:
            counts = write_crops(
                session,
                find_job(session, job).id,
                crops,
                ctx.blobs,
                max_pixels=ctx.settings.max_image_pixels,
                max_bytes=ctx.settings.max_input_bytes,
            )
        views.err.print(counts.summary(crops))
        return
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
        target = output or errors
        try:
            views.write_results(
                session,
                job_id,
                fmt,
                output,
                errors=errors,
                statuses=[s.value for s in statuses or []],
                overwrite=overwrite,
                reviewed=reviewed.value if reviewed is not None else None,
                use_edits=use_edits,
            )
        except OSError as exc:
            if target is None:
                raise
            raise RequestError(
                f"{target}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
            ) from exc


@commands.command("jobs")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, help="How many recent jobs.")] = 20,
    name: Annotated[str | None, typer.Option("--name", help="Only jobs with this name.")] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="KEY=VALUE",
            help="Only jobs with this metadata pair (repeat: all must match).",
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Recent jobs with their counts and metadata, newest first."""
    from jobs.cli.context import open_reading
    from jobs.progress import list_recent_jobs

    wanted = parse_meta(meta)
    with open_reading() as (_, reader):
        found = list_recent_jobs(reader, limit=limit, name=name, metadata=wanted)
    views.show_jobs(found, json_out=json_out)


@commands.command("cancel")
def cancel(job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")]) -> None:
    """Cancel a job: queued items are cancelled, running ones finish, results are kept."""
    from jobs.control import cancel_job
    from jobs.queries import find_job

    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
    views.err.print(f"job {job_id}: {cancel_job(ctx.session_factory, job_id)}")


class RetryOnly(StrEnum):
    failed = "failed"
    expired = "expired"


@commands.command("retry")
def retry(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    only: Annotated[
        RetryOnly | None,
        typer.Option("--only", help="Re-queue only the failed, or only the expired, items."),
    ] = None,
    every_failure: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Re-queue every failed item, also those whose failure would repeat (a corrupt "
            "image, a prompt too long; see docs/errors.md).",
        ),
    ] = False,
) -> None:
    """Re-queue the expired items of a job and the failed ones that can succeed again (with a
    new completion window, if it has one); the others keep their results."""
    from jobs.control import describe_retry, retry_batch_size, retry_job
    from jobs.dispatch import CeleryPublisher
    from jobs.queries import find_job

    ctx = open_context()
    with ctx.session_factory() as session:
        found = find_job(session, job)
        job_id, batch = found.id, retry_batch_size(found, ctx.settings.message_size)
    publisher = CeleryPublisher.for_settings(ctx.settings)
    states = (only.value,) if only is not None else ("failed", "expired")
    retried = retry_job(
        ctx.session_factory,
        publisher,
        job_id,
        batch_size=batch,
        only=states,
        codes=None if every_failure else RETRYABLE_ERROR_CODES,
    )
    for line in describe_retry(job_id, retried, states):
        views.err.print(line)


# A negative priority is a value, not an option: `llava-batch priority JOB -5`.
@commands.command("priority", context_settings={"ignore_unknown_options": True})
def priority(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    value: Annotated[
        int,
        typer.Argument(
            min=MIN_PRIORITY, max=MAX_PRIORITY, help="The new priority: higher first (0 default)."
        ),
    ],
) -> None:
    """Change a running job's priority: its next batches are claimed in the new order."""
    from jobs.lifecycle.expiry import set_priority
    from jobs.queries import find_job

    ctx = open_context()
    with ctx.session_factory() as session:
        job_id = find_job(session, job).id
    before = set_priority(ctx.session_factory, job_id, value)
    views.err.print(f"job {job_id}: priority {before} -> {value}")


@commands.command("sweep")
def sweep_command(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    heartbeat_file: Annotated[
        Path | None,
        typer.Option(
            "--heartbeat-file",
            help="Touch this file after every pass that reached the database (a container "
            "healthcheck: the sweeper is alive while it is younger than a few intervals).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per pass on stdout (JSON Lines).")
    ] = False,
) -> None:
    """Repair leases, re-publish lost messages, finalise jobs, fire due schedules."""
    import time

    from jobs.dispatch import CeleryPublisher
    from jobs.maintenance import MaintenanceReport, run_maintenance
    from jobs.metrics import record_maintenance, serve_metrics

    # A sweeper started before its database (a container that comes up first, a database
    # restarted with the fleet) must not exit, since nothing else repairs what it does, and once
    # running it rides outages out the same way, as the workers do. ``--once`` fails fast
    # (exit 5): a single pass from cron or a script should report the outage, not hang.
    ctx = _until_reachable(open_context, once=once, cap=60.0)
    if not once:
        # Its actions, the failures it declares (worker_lost) and the backlog it reads: the
        # backlog's one source where the workers run --no-sweep (docker-compose.yml).
        views.say_metrics_port(serve_metrics(ctx.settings))
    publisher = CeleryPublisher.for_settings(ctx.settings)
    interval = float(ctx.settings.sweep_interval_seconds)

    def one_pass() -> MaintenanceReport:
        report = run_maintenance(ctx.session_factory, ctx.blobs, publisher, ctx.settings)
        record_maintenance(report, ctx.session_factory)
        return report

    while True:
        report = _until_reachable(one_pass, once=once, cap=max(interval, 60.0))
        if json_out:
            print(json.dumps(report.as_dict()), flush=True)
        else:
            views.err.print(f"sweep pass: {report.describe()}")
        if heartbeat_file is not None:
            heartbeat_file.touch()
        if once:
            return
        time.sleep(interval)


def _until_reachable(step: Callable[[], T], *, once: bool, cap: float) -> T:
    """``step()``, tried again while the database is unreachable: a line each try, the wait
    doubling from 1 s up to ``cap``. ``once``: the first failure is raised."""
    import time

    from sqlalchemy.exc import DBAPIError

    from jobs.db import is_retryable

    backoff = 1.0
    while True:
        try:
            return step()
        except DBAPIError as exc:
            if once or not is_retryable(exc):
                raise
            views.err.print(
                f"sweep: the database is unreachable ({views.first_line(exc.orig)}); "
                f"retrying in {backoff:.0f}s"
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, cap)
