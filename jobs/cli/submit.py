"""``llava-batch submit <kind>``: one command per job kind (``submit batch`` for OpenAI-Batch
files), made from ``KINDS``. Submitting imports its machinery inside the command, so ``--help``
stays light."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from jobs.cli import views
from jobs.cli.context import Context, open_context
from jobs.cli.groups import Group
from jobs.cli.kind_commands import (
    Family,
    add_kind_commands,
    parameter,
    request_for,
    shared_parameters,
    sources_parameter,
)
from jobs.cli.options import (
    IdemKey,
    Json,
    Meta,
    Name,
    Reuse,
    Timeout,
    Wait,
    parse_timeout,
)
from jobs.metadata import parse_meta

if TYPE_CHECKING:
    from jobs.kinds.base import Kind
    from jobs.submit.request import SubmitRequest

SHARED = shared_parameters(
    parameter("name", Name, None),
    parameter("idempotency_key", IdemKey, None),
    parameter("meta", Meta, None),
    parameter("reuse", Reuse, None),
    parameter("wait", Wait, False),
    parameter("timeout", Timeout, None),
    parameter("json_out", Json, False),
)


def build_submit_app() -> typer.Typer:
    submit_app = typer.Typer(cls=Group, help="Submit a job; prints its id.", no_args_is_help=True)
    family = Family(
        help_of=lambda cli: cli.submit,
        first=lambda cli: [sources_parameter(cli)],
        shared=SHARED,
        action=_submit_kind,
    )
    add_kind_commands(submit_app, family)
    return submit_app


def _submit_kind(kind: Kind[Any], values: dict[str, Any], params: dict[str, Any]) -> None:
    timeout = parse_timeout(values["timeout"], waiting=values["wait"], waits_with="--wait")
    ctx = open_context()
    request = request_for(
        ctx,
        kind,
        values,
        params,
        name=values["name"],
        idempotency_key=values["idempotency_key"],
        metadata=parse_meta(values["meta"]),
        reuse=values["reuse"],
    )
    _submit(ctx, request, wait=values["wait"], timeout=timeout, json_out=values["json_out"])


def _submit(
    ctx: Context, request: SubmitRequest, *, wait: bool, timeout: int | None, json_out: bool
) -> None:
    """Submits; prints the job id last on stdout (``json_out``: one JSON document, and no
    other), then, with ``wait``, shows the progress and the job's end on stderr and exits with
    its status: stdout is the same with or without ``wait``."""
    from jobs.cli.fleet import is_served
    from jobs.dispatch import CeleryPublisher
    from jobs.submit.job import submit_job

    result = submit_job(
        request,
        session_factory=ctx.session_factory,
        blobs=ctx.blobs,
        publisher=CeleryPublisher.for_settings(ctx.settings),
        max_prompt_chars=ctx.settings.max_prompt_chars,
        in_flight_lease=ctx.settings.submit_in_flight,
    )
    served = is_served(ctx, result.model)
    # The embedded default (SQLite under LLAVA_BATCH_HOME) is where a newcomer starts, with no
    # worker and often no broker: say how the job will run instead of leaving it queued.
    embedded = not ctx.settings.database_url
    run_here = views.resume_command(ctx, result.job_id, result.model) if embedded else None
    views.show_submitted(result, result.model, json_out=json_out, served=served, run_here=run_here)
    if wait:
        sys.stdout.flush()  # the id reaches a reader now, not when the job has ended
        ended = views.watch(ctx, result.job_id, timeout=timeout)
        views.show_progress(ended, json_out=False, console=views.err)
        raise typer.Exit(views.exit_code_for(ctx, result.job_id))
