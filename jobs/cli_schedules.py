"""``llava-batch schedule …``: recurring extraction over an S3 prefix.

Due schedules fire from the sweeper (``llava-batch sweep`` and every worker's sweeper thread);
``run-now`` fires one at once from this process.

``jobs.schedules`` (croniter, which runs ``file`` in a subprocess when imported, and the whole
submit path) is imported inside the commands that use it, so ``llava-batch --help`` stays light.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from jobs import views
from jobs.context import open_context
from jobs.db import Schedule, utcnow
from jobs.dispatch import CeleryPublisher

schedule_app = typer.Typer(help="Recurring extraction over an S3 prefix.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The schedule's name.")]


@schedule_app.command("add")
def add(
    name: NameArg,
    source: Annotated[str, typer.Option(help="s3://bucket/prefix/ to watch.")],
    schema: Annotated[str, typer.Option(help="JSON Schema file for the output.")],
    every: Annotated[str | None, typer.Option(help="Period, like 15m, 1h, 1d.")] = None,
    cron: Annotated[str | None, typer.Option(help='Cron expression, like "*/15 * * * *".')] = None,
    prompt: Annotated[str | None, typer.Option(help="Extra instructions for the model.")] = None,
    pages: Annotated[str, typer.Option(help='PDF pages: "all", "first", "1-3".')] = "all",
    dpi: Annotated[int, typer.Option(help="PDF rendering resolution.")] = 144,
) -> None:
    """Add a schedule; it fires at the next due time (UTC)."""
    from jobs.extraction import read_schema_file
    from jobs.schedules import Template, add_schedule

    ctx = open_context()
    template = Template(
        model=ctx.settings.model,
        max_new_tokens=ctx.settings.max_new_tokens,
        batch_size=ctx.settings.batch_size,
        schema=read_schema_file(schema),
        prompt=prompt,
        pages=pages,
        dpi=dpi,
    )
    schedule = add_schedule(
        ctx.session_factory,
        name=name,
        source=source,
        template=template,
        every=every,
        cron=cron,
        max_prompt_chars=ctx.settings.max_prompt_chars,
    )
    views.err.print(f"schedule {name}: next run {schedule.next_due_at:%Y-%m-%d %H:%M:%S} UTC")


@schedule_app.command("list")
def list_schedules(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Schedules with their last run, last job and next due time."""
    ctx = open_context()
    with ctx.session_factory() as session:
        rows = list(session.scalars(select(Schedule).order_by(Schedule.name)))
    if json_out:
        print(json.dumps([_as_dict(s) for s in rows]))
        return
    table = Table("name", "source", "every/cron", "paused", "last run", "last job", "next")
    for s in rows:
        table.add_row(
            s.name,
            s.source,
            s.cron or f"{s.every_seconds}s",
            "yes" if s.paused else "",
            _when(s.last_run_at),
            s.last_job_id or "",
            _when(s.next_due_at),
        )
    views.out.print(table)


@schedule_app.command("pause")
def pause(name: NameArg) -> None:
    """Stop firing until resumed."""
    _set_paused(name, True)


@schedule_app.command("resume")
def resume(name: NameArg) -> None:
    """Fire again from the next due time."""
    _set_paused(name, False)


@schedule_app.command("remove")
def remove(name: NameArg) -> None:
    """Delete a schedule (its jobs stay)."""
    from jobs.schedules import find_schedule

    ctx = open_context()
    with ctx.session_factory.begin() as session:
        session.delete(find_schedule(session, name))
    views.err.print(f"schedule {name} removed")


@schedule_app.command("run-now")
def run_now(name: NameArg) -> None:
    """Fire now, even if paused: a job for the objects not processed before, or none."""
    from jobs.schedules import find_schedule, fire_due_schedules

    ctx = open_context()
    with ctx.session_factory() as session:
        paused = find_schedule(session, name).paused
    publisher = CeleryPublisher(ctx.settings.broker_url, ctx.settings.queue)
    # A paused schedule fires too (see fire_due_schedules) and says that it stays paused.
    created = fire_due_schedules(ctx.session_factory, ctx.blobs, publisher, names=[name])
    still = " (the schedule stays paused)" if paused else ""
    if created:
        views.err.print(f"schedule {name}: job created{still}")
        print(created[0])
    else:
        views.err.print(f"schedule {name}: nothing new, no job{still}")


def _set_paused(name: str, paused: bool) -> None:
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
        "source": s.source,
        "every_seconds": s.every_seconds,
        "cron": s.cron,
        "paused": s.paused,
        "last_run_at": _iso(s.last_run_at),
        "last_job_id": s.last_job_id,
        "next_due_at": _iso(s.next_due_at),
    }


def _iso(value: object) -> str | None:
    return None if value is None else value.isoformat()  # type: ignore[attr-defined]
