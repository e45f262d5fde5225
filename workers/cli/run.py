"""The body of ``llava-batch run`` (and ``run --resume JOB``): one process, no broker.

In order: every flag is checked, the output file is checked, the job is submitted (which
validates every input and writes the rows) and only then is the model loaded, so a bad flag or a
bad source never costs a model load. Then batches are worked through here (``workers.local``)
while results stream to stdout or ``-o FILE`` in submission order (``jobs.cli.run_output``) and the
progress shows on stderr (``jobs.cli.progress``).

The model loaded is the one the user chose: --model, else LLAVA_BATCH_MODEL. An input file's
model name is a label: a file (or, on ``--resume``, a job) that names another model is refused
(``model_not_served``) rather than loaded or downloaded.

Ctrl-C or SIGTERM: the batch in flight finishes and is recorded, the rest stays queued, and the
CLI prints how to resume; a second one stops at once, handing back what the run holds. Either
way the exit status is 130 and no item is left ``running``. ``run --resume JOB`` works through
what is left (a finished item is never run again) and writes the job's whole output.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn

import typer

from jobs.cli import views
from jobs.cli.context import Context
from jobs.cli.errors import fail
from jobs.cli.notifications import deliver_now
from jobs.cli.progress import Interrupts, RunCounts, RunProgress
from jobs.cli.run_output import FinishedItems, RunFormat, RunOutput, check_run_output
from jobs.errors import ExitCode, RequestError
from jobs.kinds.registry import get_kind
from jobs.lifecycle import OPEN_JOB_STATES, count_items
from jobs.metrics import serve_metrics
from jobs.queries import find_job, read_progress
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus
from workers.local import InProcessQueue, slots_in_flight, submit_locally, work_locally
from workers.pipeline import BatchReport
from workers.resources import WorkerResources, build_resources

if TYPE_CHECKING:
    from jobs.submit.request import SubmitRequest


def choose_format(fmt: RunFormat | None, json_out: bool) -> RunFormat:
    """``--json`` is ``--format jsonl``, kept for scripts that use it."""
    if json_out and fmt not in (None, RunFormat.jsonl):
        raise RequestError(
            f"--json means --format jsonl; it cannot go with --format {fmt}.",
            code="invalid_option",
        )
    return RunFormat.jsonl if json_out else (fmt or RunFormat.text)


def run_request(
    ctx: Context,
    request: SubmitRequest,
    *,
    fmt: RunFormat,
    output: str | None = None,
    errors: str | None = None,
) -> NoReturn:
    """Submits ``request`` and runs it here; exits with the job's status (130: interrupted)."""
    from jobs.submit.request import check_request

    # This process loads the request's model (--model, else LLAVA_BATCH_MODEL) and nothing
    # else: a file whose requests name another model is refused at submit (model_not_served),
    # before anything is written, rather than loading or downloading what the file names.
    request = replace(request, runs_here=True)
    check_request(request, ctx.settings.max_prompt_chars)
    check_run_output(fmt, output, errors)
    res = _resources_for(ctx, request.model)
    queue, submitted = submit_locally(request, res, max_prompt_chars=ctx.settings.max_prompt_chars)
    views.err.print(f"job {submitted.job_id}: {submitted.item_count} item(s)")
    _, kind, model = _job_facts(ctx, submitted.job_id)
    _check_served(ctx, submitted.job_id, model, served=request.model, chosen=True)
    out = RunOutput(fmt, kind=get_kind(kind), model=model, output=output, errors=errors)
    _work_here(ctx, res, submitted.job_id, queue, out)


def resume_job(
    ctx: Context,
    job_ref: str,
    *,
    fmt: RunFormat,
    output: str | None = None,
    errors: str | None = None,
    model: str | None = None,
) -> NoReturn:
    """Works through what an interrupted run left of a job; writes the job's whole output.

    It runs on ``model`` (--model), else LLAVA_BATCH_MODEL, and only if that is the job's
    model: the model a job names (a file's, through ``submit batch``) is never loaded because
    the job names it."""
    with ctx.session_factory() as session:
        job = find_job(session, job_ref)
        job_id, kind_name, job_model, status = job.id, job.kind, job.model, job.status
    check_run_output(fmt, output, errors)
    if status in OPEN_JOB_STATES:
        served = model or ctx.settings.model
        _check_served(ctx, job_id, job_model, served=served, chosen=model is not None)
    out = RunOutput(fmt, kind=get_kind(kind_name), model=job_model, output=output, errors=errors)
    if status not in OPEN_JOB_STATES:  # nothing left to run: its output, and no model
        views.err.print(f"job {job_id} is {status}: nothing left to run")
        try:
            FinishedItems(ctx.session_factory, job_id, out).write_finished()
        finally:
            out.close()
        _finish(ctx, job_id, out)
    _work_here(ctx, _resources_for(ctx, job_model), job_id, InProcessQueue(job_id), out)


def _check_served(ctx: Context, job_id: str, job_model: str, *, served: str, chosen: bool) -> None:
    """A job runs only on its own model (docs/design.md#I10), and this process loads only the
    model the user chose (--model) or configured (LLAVA_BATCH_MODEL): never one because a job
    or its file names it."""
    if job_model == served:
        return
    source = "--model" if chosen else "LLAVA_BATCH_MODEL"
    raise RequestError(
        f"job {job_id} is for the model {job_model!r} and this run serves {served!r} "
        f"({source}); a job never chooses the model that is loaded. To load {job_model!r}: "
        f"{views.resume_command(ctx, job_id, job_model)}",
        code="model_not_served",
    )


def _resources_for(ctx: Context, model: str) -> WorkerResources:
    """This run's resources, its metrics served first: a fixed metrics port that is taken
    stops the run before anything is submitted or loaded."""
    settings = ctx.settings.model_copy(update={"model": model})
    # On this machine only: `run` is the laptop's command, not a deployment's scraped worker.
    views.say_metrics_port(serve_metrics(settings, address="127.0.0.1"))
    return build_resources(settings)


def _work_here(
    ctx: Context, res: WorkerResources, job_id: str, queue: InProcessQueue, out: RunOutput
) -> NoReturn:
    stream = FinishedItems(res.session_factory, job_id, out)
    total, done, failed = _counts(ctx, job_id)
    finished = False
    try:
        with Interrupts() as interrupts, out:
            model = res.model or ctx.settings.model
            views.warn_if_tiny(model)
            views.err.print(f"loading model {model} …", markup=False)
            _ = res.engine
            counted = RunCounts(total=total, done=done, failed=failed)
            with RunProgress(views.err, counted, label=job_id[:8]) as progress:
                interrupts.on_request = lambda name: progress.note(_stopping_notice(name))
                stream.write_finished()  # resuming: what finished before, first

                def on_batch(_ids: Sequence[str], report: BatchReport) -> None:
                    progress.advance(report.succeeded, report.failed)
                    stream.write_finished()

                interrupts.graceful = True
                finished = work_locally(
                    job_id,
                    res,
                    queue,
                    on_batch=on_batch,
                    should_stop=interrupts.stop_requested,
                )
                stream.write_finished()  # what a sweep finished (worker_lost, cancelled)
                progress.sync(*_counts(ctx, job_id)[1:])
    except KeyboardInterrupt:
        finished = False
    except Exception:  # the model cannot load, the engine died: the job waits, resumable
        resume = views.resume_command(ctx, job_id, res.model or ctx.settings.model)
        views.err.print(f"job {job_id} is saved: {resume} continues it", markup=False)
        raise
    if not finished:
        # Stopping already: a late repeat of the signal must not turn the orderly exit (the
        # counts, the resume hint, status 130) into a crash half-way through it.
        for sig in Interrupts.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _interrupted(ctx, job_id, res.model or ctx.settings.model)
    _finish(ctx, job_id, out)


def _job_facts(ctx: Context, job_id: str) -> tuple[str, str, str]:
    """The job's status, kind and model."""
    with ctx.session_factory() as session:
        job = find_job(session, job_id)
        return job.status, job.kind, job.model


def _counts(ctx: Context, job_id: str) -> tuple[int, int, int]:
    """The job's items: all of them, those finished (any terminal state), those failed."""
    with ctx.session_factory() as session:
        counts = count_items(session, job_id)
    done = sum(counts.get(state, 0) for state in TERMINAL_ITEM_STATES)
    return sum(counts.values()), done, counts.get(ItemStatus.failed, 0)


def _finish(ctx: Context, job_id: str, out: RunOutput) -> NoReturn:
    """The job's summary (on stdout after text results there, else on stderr) and its exit;
    first, one try of what the job's end sends (--notify)."""
    deliver_now(ctx, job_id)
    with ctx.session_factory() as session:
        progress = read_progress(session, find_job(session, job_id))
    if out.fmt is RunFormat.text and out.to_stdout:
        views.show_progress(progress, json_out=False)
    else:
        reused = progress.usage.reused_items if progress.usage is not None else 0
        copies = f", {reused} reused from earlier results" if reused else ""
        views.err.print(
            f"job {job_id} {progress.status}: {progress.done}/{progress.total} item(s) done "
            f"({progress.counts.get('failed', 0)} failed{copies})"
        )
    views.warn_if_tiny(progress.model)
    raise typer.Exit(views.exit_code_for(ctx, job_id))


def _interrupted(ctx: Context, job_id: str, model: str) -> NoReturn:
    with ctx.session_factory() as session:
        counts = count_items(session, job_id)
    left = counts.get(ItemStatus.queued, 0) + counts.get(ItemStatus.running, 0)
    done = sum(counts.values()) - left
    views.err.print(
        f"stopped: job {job_id} has {done} item(s) done (recorded: llava-batch results "
        f"{job_id}) and {left} left to run",
        markup=False,
    )
    views.err.print(f"resume with: {views.resume_command(ctx, job_id, model)}", markup=False)
    if slots_in_flight():  # stopped at once: a batch still generates, its items handed back
        fail(KeyboardInterrupt(), now=True)
    raise typer.Exit(ExitCode.interrupted)


def _stopping_notice(name: str) -> str:
    how = "Ctrl-C" if name == "SIGINT" else name
    return (
        f"{how}: stopping after the batch in flight (its results are kept); "
        f"{how} again stops at once"
    )
