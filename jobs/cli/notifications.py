"""``llava-batch notifications JOB``: what the job's end sends (a webhook, its results
written), whether it got there, and every try with its answer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.cli import views
from jobs.cli.context import open_context
from jobs.cli.options import Json
from jobs.states import TERMINAL_JOB_STATES

if TYPE_CHECKING:
    from jobs.cli.context import Context


def notifications(
    job: Annotated[str, typer.Argument(help="Job id (or a unique prefix).")],
    json_out: Json = False,
) -> None:
    """What the job's end sends (--notify, --output): each delivery's state, next try, and
    every try's time, HTTP status and answer."""
    from rich.table import Table

    from jobs.delivery.report import deliveries_of
    from jobs.queries import find_job

    ctx = open_context()
    with ctx.session_factory() as session:
        found = find_job(session, job)
        job_id, status = found.id, found.status
        rows = deliveries_of(session, job_id)
    if json_out:
        print(json.dumps({"job_id": job_id, "deliveries": rows}))
        return
    if not rows:
        ending = "sends nothing" if status in TERMINAL_JOB_STATES else "has not ended yet"
        views.err.print(f"job {job_id} {ending}: no notifications", markup=False)
        return
    for row in rows:
        views.out.print(_headline(row))
        table = Table("try", "at", "status", "detail")
        for n, attempt in enumerate(row["tries"], 1):
            table.add_row(str(n), attempt["at"], _code(attempt), attempt["detail"] or "")
        if row["tries"]:
            views.out.print(table)


def _headline(row: dict[str, Any]) -> str:
    state = row["status"]
    if state == "pending":
        state += f", next try at {row['next_attempt_at']}"
    return (
        f"{row['what']} {row['target']} (batch.{row['event']}, id {row['id']}): {state}, "
        f"{row['attempts']} tr{'y' if row['attempts'] == 1 else 'ies'}"
    )


def _code(attempt: dict[str, Any]) -> str:
    if attempt["status_code"] is not None:
        return str(attempt["status_code"])
    return "ok" if attempt["ok"] else "failed"


def deliver_now(ctx: Context, job_id: str) -> None:
    """``run``: once the job has ended, one try of what its end sends (this process's main
    thread, never the model's), and a line each on stderr: delivered, or left to the sweeper."""
    from jobs.delivery import deliver_due
    from jobs.delivery.handlers import handlers_for
    from jobs.delivery.report import deliveries_of

    handlers = handlers_for(ctx.session_factory, ctx.blobs, ctx.settings)
    deliver_due(ctx.session_factory, handlers, among=[job_id])
    with ctx.session_factory() as session:
        rows = deliveries_of(session, job_id)
    for row in rows:
        views.err.print(_outcome(row), markup=False)


def _outcome(row: dict[str, Any]) -> str:
    last = row["tries"][-1]["detail"] if row["tries"] else None
    said = f" ({last})" if last else ""
    if row["status"] == "delivered":
        return f"{row['what']} delivered to {row['target']}{said}"
    if row["status"] == "abandoned":
        return f"{row['what']} to {row['target']} given up{said}"
    return (
        f"{row['what']} to {row['target']} not delivered yet{said}: a sweeper tries again "
        f"until 24 h after the job's end (llava-batch sweep; llava-batch notifications "
        f"{row['job_id']} shows the tries)"
    )
