"""``llava-batch submit <kind>``: one command per job kind (``submit batch`` for OpenAI-Batch
files), made from ``KINDS``. Submitting imports its machinery inside the command, so ``--help``
stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from jobs.cli import views
from jobs.cli.context import Context, open_context
from jobs.cli.fleet import is_served
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
    Wait,
)
from jobs.dispatch import CeleryPublisher
from jobs.kinds import Kind
from jobs.metadata import parse_meta

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest

SHARED = shared_parameters(
    parameter("name", Name, None),
    parameter("idempotency_key", IdemKey, None),
    parameter("meta", Meta, None),
    parameter("wait", Wait, False),
    parameter("json_out", Json, False),
)


def build_submit_app() -> typer.Typer:
    submit_app = typer.Typer(help="Submit a job; prints its id.", no_args_is_help=True)
    family = Family(
        help_of=lambda cli: cli.submit,
        first=lambda cli: [sources_parameter(cli)],
        shared=SHARED,
        action=_submit_kind,
    )
    add_kind_commands(submit_app, family)
    return submit_app


def _submit_kind(kind: Kind[Any], values: dict[str, Any], params: dict[str, Any]) -> None:
    ctx = open_context()
    request = request_for(
        ctx,
        kind,
        values,
        params,
        name=values["name"],
        idempotency_key=values["idempotency_key"],
        metadata=parse_meta(values["meta"]),
    )
    _submit(ctx, request, wait=values["wait"], json_out=values["json_out"])


def _submit(ctx: Context, request: SubmitRequest, *, wait: bool, json_out: bool) -> None:
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
    views.show_submitted(result, result.model, json_out=json_out, served=served)
    if wait:
        views.watch(ctx, result.job_id, json_out=json_out)
        raise typer.Exit(views.exit_code_for(ctx, result.job_id))
