"""``llava-batch schedule …``: recurring jobs of any kind over what is new under an S3 prefix or
a local folder.

``schedule add NAME KIND SOURCE (--every 15m | --cron "…")`` takes the options of ``submit
KIND`` (declared once by the kind: ``jobs.cli.kind_commands``), for every kind that can be
scheduled. Due schedules fire from
the sweeper (``llava-batch sweep`` and every worker's sweeper thread); ``run-now`` fires one at
once from this process.

``jobs.schedules`` (croniter, which runs ``file`` in a subprocess when imported, and the whole
submit path), the tables and the broker are imported inside the commands that use them, so
``llava-batch --help`` stays light.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.cli import views
from jobs.cli.commands import Commands
from jobs.cli.context import open_context
from jobs.cli.groups import Group
from jobs.cli.kind_commands import (
    Family,
    add_kind_commands,
    parameter,
    request_for,
    shared_parameters,
)
from jobs.cli.options import Reuse

if TYPE_CHECKING:
    from jobs.db import Schedule
    from jobs.kinds.base import Kind

schedule_commands = Commands()
NameArg = Annotated[str, typer.Argument(help="The schedule's name.")]
Source = Annotated[
    str,
    typer.Argument(
        help="s3://bucket/prefix/, or a local folder (searched recursively, dot files and "
        "symbolic links skipped; a relative path is taken from here). Each firing takes what "
        "is new or changed since the last one."
    ),
]
Every = Annotated[str | None, typer.Option(help="Fire every period: 15m, 1h, 1d (1m to 366d).")]
Cron = Annotated[
    str | None, typer.Option(help='Fire at the times of a cron expression (UTC): "*/15 * * * *".')
]


class _AddGroup(Group):
    """``schedule add NAME KIND SOURCE …``; also the form from before schedules had kinds,
    ``schedule add NAME --source s3://… --schema FILE …``, which is ``add NAME extract s3://… …``:
    the options it took are the extract command's, under the same names."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _without_source_option(args))


def _without_source_option(args: list[str]) -> list[str]:
    if "--help" in args or not any(a.split("=")[0] == "--source" for a in args):
        return args
    words: list[str] = []
    options: list[str] = []
    source = None
    given = iter(args)
    for arg in given:
        if arg.split("=")[0] == "--source":
            source = arg.partition("=")[2] if "=" in arg else next(given, "")
        elif arg.startswith("-"):
            options.append(arg)
            if "=" not in arg:  # every option of the old form takes a value
                options.append(next(given, ""))
        else:
            words.append(arg)
    if len(words) != 1 or source is None:  # not the old form: let the parser say what is wrong
        return args
    return [words[0], "extract", source, *options]


def build_schedule_app() -> typer.Typer:
    schedule_app = typer.Typer(
        cls=Group,
        help="Recurring jobs over what is new under an S3 prefix or a local folder.",
        no_args_is_help=True,
    )
    add_app = typer.Typer(cls=_AddGroup, no_args_is_help=True)
    add_app.callback()(add)
    add_kind_commands(add_app, _ADD)
    schedule_app.add_typer(add_app, name="add")
    return schedule_commands.add_to(schedule_app)


def add(name: NameArg) -> None:
    """Add a schedule: `schedule add NAME KIND SOURCE --every 15m`.

    Each firing submits one job of that kind for what is new or changed under SOURCE since the
    last one (nothing new: no job). The first fires at the next due time (UTC); `schedule
    run-now NAME` tries it at once."""


def _add_kind(kind: Kind[Any], values: dict[str, Any], params: dict[str, Any]) -> None:
    """Checks and stores the schedule; its jobs run on ``--model``, else the LLAVA_BATCH_MODEL
    of now, so they go to that model's queue like a submitted job's."""
    from jobs.cli.fleet import is_served
    from jobs.schedules import add_schedule

    cli: typer.Context = values["cli"]
    assert cli.parent is not None  # the `add NAME` group
    name: str = cli.parent.params["name"]
    ctx = open_context()
    request = request_for(ctx, kind, values, params, name=name, reuse=values["reuse"])
    schedule = add_schedule(
        ctx.session_factory,
        name=name,
        source=values["source"],
        request=request,
        every=values["every"],
        cron=values["cron"],
        max_prompt_chars=ctx.settings.max_prompt_chars,
    )
    views.warn_if_tiny(request.model)
    if not is_served(ctx, request.model):
        views.err.print(f"warning: {views.no_worker_serves(request.model)}", markup=False)
    views.err.print(
        f"schedule {name}: {kind.name} over {schedule.source} on {request.model}, "
        f"next run {schedule.next_due_at:%Y-%m-%d %H:%M:%S} UTC",
        markup=False,
    )
    if schedule.output_uri is not None:
        views.err.print(
            f"each job's results go to {schedule.output_uri} ({schedule.output_format})",
            markup=False,
        )


_ADD = Family(
    help_of=lambda cli: cli.schedule,
    first=lambda cli: [
        parameter("cli", typer.Context),
        parameter("source", Source),
    ],
    shared=shared_parameters(
        parameter("every", Every, None),
        parameter("cron", Cron, None),
        parameter("reuse", Reuse, None),
    ),
    action=_add_kind,
)


@schedule_commands.command("list")
def list_schedules(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Schedules with their last run, last job and next due time."""
    from sqlalchemy import select

    from jobs.db import Schedule

    ctx = open_context()
    with ctx.session_factory() as session:
        rows = list(session.scalars(select(Schedule).order_by(Schedule.name)))
    if json_out:
        print(json.dumps([_as_dict(s) for s in rows]))
        return
    from rich.table import Table

    table = Table("name", "kind", "source", "every/cron", "paused", "last run", "last job", "next")
    for s in rows:
        table.add_row(
            s.name,
            s.kind,
            s.source,
            s.cron or f"{s.every_seconds}s",
            "yes" if s.paused else "",
            _when(s.last_run_at),
            s.last_job_id or "",
            _when(s.next_due_at),
        )
    views.out.print(table)


@schedule_commands.command("pause")
def pause(name: NameArg) -> None:
    """Stop firing until resumed."""
    _set_paused(name, True)


@schedule_commands.command("resume")
def resume(name: NameArg) -> None:
    """Fire again from the next due time."""
    _set_paused(name, False)


@schedule_commands.command("remove")
def remove(name: NameArg) -> None:
    """Delete a schedule (its jobs stay)."""
    from jobs.schedules import find_schedule

    ctx = open_context()
    with ctx.session_factory.begin() as session:
        session.delete(find_schedule(session, name))
    views.err.print(f"schedule {name} removed")


@schedule_commands.command("run-now")
def run_now(name: NameArg) -> None:
    """Fire now, even if paused: a job for the inputs not processed before, or none."""
    from jobs.dispatch import CeleryPublisher
    from jobs.schedules import find_schedule, fire_due_schedules

    ctx = open_context()
    with ctx.session_factory() as session:
        paused = find_schedule(session, name).paused
    publisher = CeleryPublisher.for_settings(ctx.settings)
    # A paused schedule fires too (see fire_due_schedules) and says that it stays paused.
    created = fire_due_schedules(
        ctx.session_factory,
        ctx.blobs,
        publisher,
        names=[name],
        input_prefixes=ctx.settings.input_prefixes,
        in_flight_lease=ctx.settings.submit_in_flight,
    )
    still = " (the schedule stays paused)" if paused else ""
    if created:
        views.err.print(f"schedule {name}: job created{still}")
        print(created[0])
    else:
        views.err.print(f"schedule {name}: nothing new, no job{still}")


def _set_paused(name: str, paused: bool) -> None:
    from jobs.db import utcnow
    from jobs.schedules import find_schedule, next_due

    ctx = open_context()
    with ctx.session_factory.begin() as session:
        schedule = find_schedule(session, name)
        schedule.paused = paused
        if not paused:
            schedule.next_due_at = next_due(schedule, utcnow())
    views.err.print(f"schedule {name} {'paused' if paused else 'resumed'}")


def _when(value: object) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _as_dict(s: Schedule) -> dict[str, object]:
    return {
        "name": s.name,
        "kind": s.kind,
        "model": s.params.get("model"),
        "source": s.source,
        "every_seconds": s.every_seconds,
        "cron": s.cron,
        "paused": s.paused,
        "last_run_at": _iso(s.last_run_at),
        "last_job_id": s.last_job_id,
        "next_due_at": _iso(s.next_due_at),
        # Each job's results go there when it ends ({schedule}, {job}, {date} as written).
        "deliver_to": s.output_uri,
        "deliver_format": s.output_format,
        "notify_url": s.notify_url,
        # Each job copies earlier results for inputs asked about before (--reuse).
        "reuse": bool(s.params.get("reuse", False)),
    }


def _iso(value: object) -> str | None:
    return None if value is None else value.isoformat()  # type: ignore[attr-defined]
