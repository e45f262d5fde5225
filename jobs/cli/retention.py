"""``llava-batch delete`` and ``llava-batch purge``: what is deleted when a user asks, and what
retention deletes for cron users who run no sweeper."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs.cli import views
from jobs.cli.context import open_context
from jobs.cli.options import Json


def delete(
    jobs: Annotated[
        list[str], typer.Argument(help="Job ids (or unique prefixes): jobs that have ended.")
    ],
    keep_inputs: Annotated[
        bool,
        typer.Option(
            "--keep-inputs", help="Keep the stored inputs (by default, those no other job uses go)."
        ),
    ] = False,
    json_out: Json = False,
) -> None:
    """Delete ended jobs with their items, pages and results, and the stored inputs no other
    job uses. All or nothing: if one has not ended, nothing is deleted (exit 8)."""
    from jobs.queries import find_job
    from jobs.retention.purge import delete_jobs

    ctx = open_context()
    with ctx.session_factory() as session:
        ids = [find_job(session, job).id for job in jobs]
    report = delete_jobs(
        ctx.session_factory,
        ctx.blobs,
        ids,
        batch=ctx.settings.purge_batch,
        keep_inputs=keep_inputs,
    )
    if json_out:
        print(json.dumps({"deleted": ids, **report.as_dict()}))
        return
    for job_id in ids:
        views.err.print(f"job {job_id}: deleted")
    views.err.print(_inputs_line(report.inputs_deleted, waiting=report.inputs_waiting))


def purge(json_out: Json = False) -> None:
    """Delete every job whose retention has passed (and finish deletions a crash left
    half-way), then the stored inputs no job uses; what the sweeper does a few seconds at a
    time, run to the end (for cron, where no sweeper runs)."""
    from jobs.retention.purge import purge as run_purge

    ctx = open_context()
    report = run_purge(ctx.session_factory, ctx.blobs, batch=ctx.settings.purge_batch)
    if json_out:
        print(json.dumps(report.as_dict()))
        return
    views.err.print(
        f"purge: {report.jobs_deleted} job(s) and {report.items_deleted} item(s) deleted; "
        + _inputs_line(report.inputs_deleted, waiting=report.inputs_waiting)
    )


def _inputs_line(deleted: int, *, waiting: bool) -> str:
    line = f"{deleted} stored input(s) no job uses deleted"
    if waiting:
        line += " (others wait while a submit is in flight: the sweeper or the next purge goes on)"
    return line
