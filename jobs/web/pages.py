"""The jobs page (with cancel and retry, as the CLI does them), the fleet page, signing in and
out."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from jobs.errors import RETRYABLE_ERROR_CODES, JobsError
from jobs.web.security import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    check_csrf,
    clear_cookie,
    session_value,
    set_cookie,
    token_matches,
)

if TYPE_CHECKING:
    from jobs.web.app import Deps

FLASH_COOKIE = "llava_batch_flash"
JOBS_SHOWN = 100
REFRESH_SECONDS = 5


def deps_of(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


def refusal(exc: JobsError) -> str:
    """A refusal in the CLI's own words: ``error: <sentence> [<code>]``."""
    return f"error: {exc.message} [{exc.code}]"


def take_flash(request: Request) -> list[str]:
    """The lines the last action left to show (cancel, retry, a refusal)."""
    text = request.cookies.get(FLASH_COOKIE)
    return unquote(text).split("\n") if text else []


def with_flash(response: Response, lines: list[str]) -> Response:
    set_cookie(response, FLASH_COOKIE, quote("\n".join(lines)), max_age=60)
    return response


def shown(request: Request, response: Response) -> Response:
    """``response`` after a page showed the flash lines: they are not shown twice."""
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/", secure=True, httponly=True)
    return response


def jobs_page(request: Request) -> Response:
    from jobs.queries import list_recent_jobs
    from jobs.states import JobStatus
    from jobs.web.app import render

    deps = deps_of(request)
    with deps.session_factory() as session:
        jobs = list_recent_jobs(session, limit=JOBS_SHOWN)
    running = any(job.status in (JobStatus.queued, JobStatus.in_progress) for job in jobs)
    unfinished = (JobStatus.queued, JobStatus.in_progress, JobStatus.cancelling)
    return shown(
        request,
        render(
            request,
            "jobs.html",
            jobs=jobs,
            refresh=REFRESH_SECONDS if running or any(j.status in unfinished for j in jobs) else 0,
            unfinished=unfinished,
            flash=take_flash(request),
        ),
    )


def fleet_page(request: Request) -> Response:
    from jobs.fleet_report import FAILURE_WINDOW, RATE_WINDOW, fleet_report
    from jobs.web.app import render

    deps = deps_of(request)
    with deps.session_factory() as session:
        models = fleet_report(session, heartbeat_seconds=deps.settings.worker_heartbeat_seconds)
    return render(
        request,
        "fleet.html",
        models=models,
        refresh=REFRESH_SECONDS,
        rate_window=int(RATE_WINDOW.total_seconds()),
        failure_window=int(FAILURE_WINDOW.total_seconds() // 60),
    )


async def cancel(request: Request) -> Response:
    """``llava-batch cancel JOB``: the same function, the same words."""
    from jobs.control import cancel_job

    await check_csrf(request)
    deps = deps_of(request)
    job_id = request.path_params["job_id"]
    try:
        status = await run_in_threadpool(cancel_job, deps.session_factory, job_id)
        lines = [f"job {job_id}: {status}"]
    except JobsError as exc:
        lines = [refusal(exc)]
    return with_flash(RedirectResponse("/", status_code=303), lines)


async def retry(request: Request) -> Response:
    """``llava-batch retry JOB``: expired items and the failures that can succeed again."""
    await check_csrf(request)
    deps = deps_of(request)
    states = ("failed", "expired")
    lines = await run_in_threadpool(_retry, deps, request.path_params["job_id"], states)
    return with_flash(RedirectResponse("/", status_code=303), lines)


def _retry(deps: Deps, job_ref: str, states: tuple[str, ...]) -> list[str]:
    from jobs.control import describe_retry, retry_batch_size, retry_job
    from jobs.dispatch import CeleryPublisher
    from jobs.queries import find_job

    try:
        with deps.session_factory() as session:
            job = find_job(session, job_ref)
            job_id, batch = job.id, retry_batch_size(job, deps.settings.message_size)
        publisher = CeleryPublisher.for_settings(deps.settings)
        retried = retry_job(
            deps.session_factory,
            publisher,
            job_id,
            batch_size=batch,
            only=states,
            codes=RETRYABLE_ERROR_CODES,
        )
        return describe_retry(job_id, retried, states)
    except JobsError as exc:
        return [refusal(exc)]


async def login_page(request: Request) -> Response:
    """Asks for the token once; then a session cookie stands for it."""
    from jobs.web.app import render

    deps = deps_of(request)
    if deps.token is None:
        return RedirectResponse("/", status_code=303)
    if request.method == "GET":
        return render(request, "login.html", wrong=False, wait=0)
    await check_csrf(request)
    # Behind a proxy on this host, uvicorn gives the address the proxy forwarded.
    host = request.client.host if request.client else ""
    wait = deps.login_throttle.wait_seconds(host)
    if wait:
        # The token is not even read: a guess made while waiting can never be the lucky one.
        response = render(request, "login.html", 429, wrong=False, wait=wait)
        response.headers["Retry-After"] = str(wait)
        return response
    given = (await request.form()).get("token")
    if not isinstance(given, str) or not token_matches(given, deps.token):
        deps.login_throttle.failed(host)
        return render(request, "login.html", 401, wrong=True, wait=0)
    response = RedirectResponse("/", status_code=303)
    set_cookie(response, SESSION_COOKIE, session_value(deps.token), max_age=SESSION_SECONDS)
    return response


async def logout(request: Request) -> Response:
    """Forgets the session in this browser. A POST with the CSRF field, never a GET: a page of
    another site could otherwise sign a reviewer out with an image tag."""
    await check_csrf(request)
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    return response
