"""``llava-batch``, whole: the console script and the composition root. It adds the commands
that need a model (``worker``, ``run <kind>``) to ``jobs.cli``'s app, which holds every other
command; this package is the only place that imports both ``jobs.cli`` and the worker side.

The ``run`` commands are made from ``COMMANDS`` like ``submit``'s (``jobs.cli.kind_commands``).
Imports stay light at module level: the pipeline, Celery and the model load inside the commands
that use them (``workers.cli.run``), so ``--help`` never imports torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from jobs.cli import views
from jobs.cli.app import build_app as build_jobs_app
from jobs.cli.context import Context, open_context
from jobs.cli.errors import run_cli
from jobs.cli.groups import Group
from jobs.cli.kind_commands import (
    Family,
    add_kind_commands,
    parameter,
    request_for,
    shared_parameters,
    sources_parameter,
)
from jobs.cli.options import Json, Reuse
from jobs.cli.run_output import RunFormat
from jobs.errors import RequestError
from jobs.kinds.commands import COMMANDS

if TYPE_CHECKING:
    from jobs.kinds.base import Kind
    from jobs.submit.request import SubmitRequest


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


def build_app() -> typer.Typer:
    """Every command: ``jobs.cli``'s, ``run <kind>`` for each kind, and ``worker``."""
    app = build_jobs_app()
    run_app = typer.Typer(
        cls=Group,
        help="Run a job in this process (no broker, no separate worker), or resume one: "
        "llava-batch run --resume JOB.",
        no_args_is_help=True,
        invoke_without_command=True,
    )
    run_app.callback()(run_group)
    add_kind_commands(run_app, RUN)
    app.add_typer(run_app, name="run")
    app.command("worker")(worker)
    return app


def main() -> NoReturn:
    run_cli(build_app())


def _run_kind(kind: Kind[Any], values: dict[str, Any], params: dict[str, Any]) -> None:
    ctx = open_context()
    request = request_for(ctx, kind, values, params, reuse=values["reuse"])
    _run_here(
        ctx,
        request,
        json_out=values["json_out"],
        fmt=values["fmt"],
        output=values["output"],
        errors=values["errors"],
    )


RUN = Family(
    help_of=lambda cli: cli.run_help,
    first=lambda cli: [sources_parameter(cli)],
    shared=shared_parameters(
        parameter("fmt", RunFmt, None),
        parameter("output", Output, None),
        parameter("errors", Errors, None),
        parameter("json_out", Json, False),
        parameter("reuse", Reuse, None),
    ),
    action=_run_kind,
)


def _run_here(
    ctx: Context,
    request: SubmitRequest,
    *,
    json_out: bool = False,
    fmt: RunFormat | None = None,
    output: str | None = None,
    errors: str | None = None,
) -> None:
    """Every ``run`` command's one path (``workers.cli.run``): flags, output and inputs are
    checked and the job submitted before the model loads; results stream as items finish,
    progress shows on stderr, and Ctrl-C leaves the job resumable."""
    from workers.cli.run import choose_format, run_request

    chosen = choose_format(fmt, json_out)
    run_request(ctx, request, fmt=chosen, output=output, errors=errors)


def run_group(
    command: typer.Context,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="JOB",
            help="Finish a job an interrupted run left (a finished item never runs again); "
            "writes the job's whole output. Takes --format, -o, --errors, --json and --model here.",
        ),
    ] = None,
    fmt: RunFmt = None,
    output: Output = None,
    errors: Errors = None,
    json_out: Json = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="--resume: the model to load (default: LLAVA_BATCH_MODEL); it must be the "
            "job's. A job never chooses the model that is loaded.",
        ),
    ] = None,
) -> None:
    """Run a job in this process (no broker, no separate worker), or resume one."""
    given = (
        fmt is not None or output is not None or errors is not None or json_out or model is not None
    )
    if command.invoked_subcommand is not None:
        if resume is not None:
            raise RequestError(
                "--resume JOB takes no command: llava-batch run --resume JOB.",
                code="invalid_option",
            )
        if given:
            raise RequestError(
                "options go after the command: llava-batch run caption SOURCE… "
                "--format jsonl -o FILE --model MODEL.",
                code="invalid_option",
            )
        return
    if resume is None:
        raise RequestError(
            "a command is missing: llava-batch run KIND SOURCE… (KIND: "
            f"{', '.join(c.word for c in COMMANDS.values())}), or llava-batch run --resume JOB.",
            code="usage_error",
        )
    from workers.cli.run import choose_format, resume_job

    ctx = open_context()
    if model is not None and not model.strip():
        raise RequestError("--model must not be empty.", code="invalid_option")
    resume_job(
        ctx, resume, fmt=choose_format(fmt, json_out), output=output, errors=errors, model=model
    )


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
            "--events/--no-events",
            "-E",
            help="Send Celery task events (for Flower or celery events).",
        ),
    ] = True,
) -> None:
    """Start a GPU worker: loads the model once, then processes batches from the queue."""
    if pool not in ("solo", "threads"):
        raise RequestError(
            "--pool must be solo or threads: CUDA does not survive fork.", code="invalid_option"
        )
    ctx = open_context()  # settings and schema are checked before the model loads
    slots = 1 if pool == "solo" else concurrency or ctx.settings.worker_slots
    # The resources split their budgets between the slots the pool really runs.
    settings = ctx.settings.model_copy(update={"worker_slots": slots})
    from jobs.fleet import queue_for
    from jobs.metrics import serve_metrics
    from workers.tasks import build_worker

    serve_metrics(settings)  # a fixed port that is taken stops it here, before the model loads
    celery_app, process = build_worker(settings, sweep=sweep_in_worker)
    celery_app.conf.worker_send_task_events = events
    # Load before consuming: the solo/threads pool runs tasks in this very process, so the
    # model stays resident, and a checkpoint that cannot load is one clear error, not a loop.
    views.err.print(f"loading model {settings.model} …")
    _ = process.resources.engine

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
    celery_app.worker_main(argv)


def default_node_name() -> str:
    """``llava-batch-<pid>@%h``: two workers on one host (one per GPU) get two node names.
    Celery's own default, ``celery@%h``, makes them one node to ``inspect ping``."""
    return f"llava-batch-{os.getpid()}@%h"
