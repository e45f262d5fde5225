"""How the CLI shows things: rich for people, JSON for machines. Data goes to stdout,
messages to stderr, so ``llava-batch submit … | tail -1`` is the job id.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from jobs.errors import ExitCode, RequestError, WaitTimeoutError
from jobs.exports import ResultFormat as ResultFormat  # re-exported: the CLI's option type
from jobs.metadata import describe_metadata
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus

# The queries (SQLAlchemy) load inside the functions that read the database, and what only
# some output needs (tables, the progress bar, periods, the model list) inside the functions
# that print it: the CLI builds every command's options from this module, and --help reads none.
if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.cli.context import Context
    from jobs.progress import JobProgress
    from jobs.submit.request import SubmitResult

# No markup and no emoji codes in anything printed: what is printed holds user text (file names,
# job names, metadata, error sentences quoting them), which must come out as typed. With them,
# "photo:x:.jpg" printed as "photo❌.jpg" and a job named "[/b]" made `status` fail. A style is
# given as a rich Text, never as markup in a string.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

TINY_WARNING = (
    "note: model {model} is a tiny, randomly initialised model built offline: its captions are "
    "noise (extracted fields too, though they still validate against the schema). Set "
    "LLAVA_BATCH_MODEL=llava-hf/llava-1.5-7b-hf (or a local copy) for real ones."
)


def first_line(exc: object) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def say_metrics_port(port: int | None) -> None:
    """Where this process serves its Prometheus metrics (``jobs.metrics.serve_metrics``)."""
    if port is not None:
        err.print(f"metrics served on port {port} (/metrics)")


def warn_if_tiny(model: str) -> None:
    from model.engine import TINY_MODELS

    if model in TINY_MODELS:
        err.print(TINY_WARNING.format(model=model), markup=False)


def show_submitted(
    result: SubmitResult,
    model: str,
    *,
    json_out: bool,
    served: bool | None = None,
    run_here: str | None = None,
) -> None:
    """``served``: whether a live worker serves ``model`` (None: not asked); ``run_here``: the
    command that runs the job in one process, to offer when no worker serves it (the embedded
    default, where a newcomer has started none)."""
    if json_out:
        shown: dict[str, object] = {
            "job_id": result.job_id,
            "items": result.item_count,
            "dispatched": result.dispatched,
            "existing": result.existing,
            "complete": result.complete,
            "failed": result.failed,
            "model": model,
        }
        if served is not None:
            shown["waiting_for_worker"] = not served
        print(json.dumps(shown))
        return
    warn_if_tiny(model)
    if served is False and run_here is None:
        err.print(f"warning: {no_worker_serves(model)}", markup=False)
    if result.existing:
        err.print(f"the idempotency key matches job {result.job_id}; nothing new submitted")
        if not result.complete:
            err.print(
                f"that job is still being submitted: {result.item_count} item(s) written so far"
            )
    elif not result.complete:
        err.print(
            f"the job was cancelled while it was being submitted: {result.item_count} item(s) "
            "were written; the rest were not"
        )
    else:
        err.print(f"submitted {result.item_count} item(s)")
    if result.failed:
        err.print(
            f"{result.failed} of them failed at once, each with its own error (an empty input, "
            f"one over the size limit): `llava-batch results {result.job_id} --status failed` "
            "lists them"
        )
    if not result.dispatched and result.existing:
        err.print(
            "dispatch pending: some of its items were not published when it was submitted; "
            "the sweeper will dispatch them when the broker is reachable"
        )
    elif not result.dispatched:
        err.print(
            "dispatch pending: the broker is unreachable; the job is saved and queued, "
            "and the sweeper will dispatch it when the broker is back"
        )
    if served is False and run_here is not None:
        err.print(
            f"nothing runs this job yet: no live worker serves the model {model}. Run it here, "
            f"in one process: {run_here} (no broker or worker needed); or start a worker: "
            f"LLAVA_BATCH_MODEL={shlex.quote(model)} llava-batch worker (with a broker at "
            "LLAVA_BATCH_BROKER_URL)",
            markup=False,
        )
    print(result.job_id)


class StatusFormat(StrEnum):
    text = "text"
    json = "json"
    openai = "openai"  # an OpenAI Batch object (jobs.openai_batch)


def show_batch(batch: dict[str, Any]) -> None:
    print(json.dumps(batch, ensure_ascii=False))


def show_progress(progress: JobProgress, *, json_out: bool, console: Console = out) -> None:
    """``progress`` as JSON on stdout, or for people on ``console`` (stdout unless told)."""
    if json_out:
        print(json.dumps(progress.as_dict()))
        return
    rate = f"{progress.items_per_second:.2f} items/s" if progress.items_per_second else "-"
    eta = f"{progress.eta_seconds:.0f}s" if progress.eta_seconds is not None else "-"
    counts = ", ".join(f"{state} {n}" for state, n in progress.counts.items() if n)
    named = f"  {progress.name}" if progress.name else ""
    console.print(
        Text.assemble(f"job {progress.id}{named}  {progress.kind}  ", (progress.status, "bold"))
    )
    console.print(
        f"  {progress.done}/{progress.total} done ({counts or 'no items'})  {rate}  ETA {eta}"
    )
    if progress.usage is not None and progress.usage.total_tokens:
        u = progress.usage
        console.print(
            f"  tokens: {u.prompt_tokens} prompt + {u.completion_tokens} completion "
            f"= {u.total_tokens}"
        )
    if progress.usage is not None and progress.usage.reused_items:
        console.print(
            f"  reused: {progress.usage.reused_items} result(s) copied from earlier results, "
            "the model not run for them (no tokens counted)"
        )
    if progress.metadata:
        console.print(f"  metadata: {describe_metadata(progress.metadata)}", markup=False)
    sharing = describe_sharing(progress)
    if sharing:
        console.print(f"  {sharing}", markup=False)
    retention = describe_retention(progress)
    if retention:
        console.print(f"  {retention}", markup=False)
    if progress.waiting_for_worker:
        console.print(f"  waiting: {no_worker_serves(progress.model)}", markup=False)
    if progress.output is not None:
        from jobs.progress import describe_output

        console.print(f"  {describe_output(progress.output)}", markup=False)


def describe_retention(progress: JobProgress) -> str:
    """When the job will be deleted ("" when it is kept until someone deletes it)."""
    if progress.retained_until is not None:
        return f"retained until {progress.retained_until:%Y-%m-%d %H:%M:%S} UTC"
    if progress.retain_seconds is not None:
        from jobs.durations import written_period

        return f"retained for {written_period(progress.retain_seconds)} after it ends"
    return ""


def describe_sharing(progress: JobProgress) -> str:
    """Its priority, window and place in the claim order, in one line ("" when all default)."""
    parts = []
    if progress.priority:
        parts.append(f"priority {progress.priority}")
    if progress.expires_at is not None:
        parts.append(f"window ends {progress.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    turn = progress.turn
    if turn is not None and turn.position is not None:
        place = f"turn {turn.position} of {turn.active_jobs}, share {turn.share:.0%}"
        if turn.ahead:
            place += f", {turn.ahead} item(s) of higher priority ahead"
        parts.append(place)
    return "  ".join(parts)


def resume_command(ctx: Context, job_id: str, model: str) -> str:
    """The command that runs the job in one process (``run --resume``): with --model unless
    LLAVA_BATCH_MODEL is its model (a resume loads only what the command or the setting
    names)."""
    given = "" if model == ctx.settings.model else f" --model {shlex.quote(model)}"
    return f"llava-batch run --resume {job_id}{given}"


def no_worker_serves(model: str) -> str:
    return (
        f"no live worker serves the model {model}; its items wait until one starts "
        f"(LLAVA_BATCH_MODEL={model} llava-batch worker)"
    )


def show_jobs(jobs: Sequence[JobProgress], *, json_out: bool) -> None:
    if json_out:
        print(json.dumps([p.as_dict() for p in jobs]))
        return
    # The priority and retention columns only when a listed job has one: the table stays as
    # narrow as it was.
    prioritised = any(p.priority for p in jobs)
    retained = any(p.retained_until is not None for p in jobs)
    from rich.table import Table

    columns = ["job", "name", "kind", "status", "priority", "done", "failed", "created"]
    table = Table(
        *(c for c in columns if prioritised or c != "priority"),
        *(["retained until"] if retained else []),
        "metadata",
    )
    for p in jobs:
        until = p.retained_until
        table.add_row(
            p.id,
            p.name or "",
            p.kind,
            p.status,
            *([str(p.priority)] if prioritised else []),
            f"{p.done}/{p.total}",
            str(p.counts.get("failed", 0)),
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            *([until.strftime("%Y-%m-%d %H:%M") if until else ""] if retained else []),
            describe_metadata(p.metadata),
        )
    out.print(table)


def watch(ctx: Context, job_id: str, *, timeout: int | None = None) -> JobProgress:
    """Polls until the job ends and returns its progress then, with the token totals.

    Meanwhile its progress goes to stderr (``RunProgress``): a bar on a terminal, otherwise a
    line at once and one every few seconds, so a log or a CI job shows it moving. ``timeout``:
    seconds; when they pass first, ``WaitTimeoutError`` (the job goes on). The polls come
    ten a second through the first second, then one a second (``poll_delays``)."""
    from jobs.cli.fleet import is_served, with_waiting
    from jobs.cli.progress import RunCounts, RunProgress
    from jobs.durations import written_period
    from jobs.queries import find_job, read_progress

    deadline = None if timeout is None else time.monotonic() + timeout
    delays = poll_delays()
    progress = _poll(ctx, job_id)
    counts = RunCounts(progress.total, progress.done, progress.counts.get(ItemStatus.failed, 0))
    with RunProgress(err, counts, label=job_id[:8]) as shown:
        while True:
            shown.sync(progress.done, progress.counts[ItemStatus.failed], total=progress.total)
            if progress.status in TERMINAL_JOB_STATES:
                break
            served = partial(is_served, ctx, progress.model)
            waiting = with_waiting(progress, served).waiting_for_worker
            shown.tick(f"{progress.status}, waiting for a worker" if waiting else progress.status)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} has not ended within --timeout {written_period(timeout or 0)} "
                    f"({progress.done}/{progress.total} done, {progress.status}); it goes on: "
                    f"llava-batch status {job_id}"
                )
            time.sleep(next(delays))
            progress = _poll(ctx, job_id)
    with ctx.session_factory() as session:  # once more, with the token totals
        return read_progress(session, find_job(session, job_id))


FIRST_POLL_SECONDS = 0.1
POLL_SECONDS = 1.0


def poll_delays() -> Iterator[float]:
    """The waits between a watch's polls: a tenth of a second through the first second, then a
    second. A small job that ends within a second (a pipeline's ``submit --wait``) is seen
    ending within a tenth of a second, not up to a second later; after the first second the
    polls fall where they fell before, once a second, so no job is seen later than it was."""
    for _ in range(round(POLL_SECONDS / FIRST_POLL_SECONDS)):
        yield FIRST_POLL_SECONDS
    while True:
        yield POLL_SECONDS


def _poll(ctx: Context, job_id: str) -> JobProgress:
    from jobs.queries import find_job, read_progress

    with ctx.session_factory() as session:
        return read_progress(session, find_job(session, job_id), usage=False, turn=False)


def exit_code_for(ctx: Context, job_id: str) -> ExitCode:
    from jobs.queries import find_job

    with ctx.session_factory() as session:
        status = find_job(session, job_id).status
    return ExitCode.ok if status == JobStatus.completed else ExitCode.job_not_completed


def write_results(
    session: Session,
    job_id: str,
    fmt: ResultFormat,
    output: str | None,
    *,
    errors: str | None = None,
    statuses: Collection[str] | None = None,
    overwrite: bool = False,
    chunk: int = 1000,
    reviewed: str | None = None,
    use_edits: bool = False,
) -> None:
    """Streams a job's results in ``fmt`` to ``output`` (None: stdout), ``chunk`` items per
    query; ``errors``: a separate file for the failed items (``openai`` only); ``statuses``:
    only items in these states; ``reviewed``: only items so reviewed (approved, rejected,
    unreviewed); ``use_edits``: ``openai`` answers with the reviewers' edits. ``txt``: one
    file per item into the folder ``output`` (``jobs.sidecars``), replacing files there only
    with ``overwrite``. ``jsonl`` and ``csv`` carry each item's review; the reviews are read
    by a join only when the job has any (``jobs.exports.open_job_export``)."""
    from jobs.exports import open_job_export
    from jobs.queries import find_job

    job = find_job(session, job_id)
    if use_edits and fmt is not ResultFormat.openai:
        raise RequestError(
            "--use-edits goes with --format openai (jsonl and csv carry the edits in their "
            "own column).",
            code="invalid_option",
        )
    if reviewed is not None and fmt is ResultFormat.txt:
        raise RequestError(
            "--reviewed does not go with --format txt: it writes the succeeded items only.",
            code="invalid_option",
        )
    if errors is not None and fmt is not ResultFormat.openai:
        raise RequestError("--errors goes with --format openai.", code="invalid_option")
    if overwrite and fmt is not ResultFormat.txt:
        raise RequestError(
            "--overwrite goes with --format txt (-o FILE always replaces the file).",
            code="invalid_option",
        )
    if fmt is ResultFormat.txt:
        _write_sidecars(
            session, job_id, output, statuses=statuses, overwrite=overwrite, chunk=chunk
        )
        return
    if (
        errors is not None
        and output is not None
        and Path(errors).resolve() == Path(output).resolve()
    ):
        raise RequestError("--errors must name another file than -o.", code="invalid_output")
    with ExitStack() as files:
        stream = files.enter_context(_open_output(output)) if output else sys.stdout
        error_stream = files.enter_context(_open_output(errors)) if errors else None
        export = open_job_export(
            session,
            job,
            fmt,
            stream,
            errors=error_stream,
            statuses=statuses,
            chunk=chunk,
            reviewed=reviewed,
            use_edits=use_edits,
        )
        writer = export.writer
        for item in export.items:
            writer.write(item)
        stream.flush()
    if writer.skipped:
        err.print(
            f"note: {writer.skipped} item(s) not finished yet are not in the output; "
            "export again when the job has ended"
        )


def _write_sidecars(
    session: Session,
    job_id: str,
    output: str | None,
    *,
    statuses: Collection[str] | None,
    overwrite: bool,
    chunk: int,
) -> None:
    if output is None:
        raise RequestError(
            "--format txt writes one file per item: name their folder with -o DIR.",
            code="invalid_option",
        )
    if statuses:
        raise RequestError(
            "--status does not go with --format txt: it writes the succeeded items only.",
            code="invalid_option",
        )
    from jobs.sidecars import write_sidecars

    counts = write_sidecars(session, job_id, output, overwrite=overwrite, chunk=chunk)
    err.print(counts.summary(output))


def _open_output(path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise RequestError(
            f"{path}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
        ) from exc
