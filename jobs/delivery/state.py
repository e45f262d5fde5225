"""Where a job's results were written, as ``status`` and ``run`` show it: the job's folder
(``jobs.output_uri``) and the state of its ``output`` delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.db import Delivery, Job


def read_output(session: Session, job: Job) -> dict[str, Any] | None:
    """``{"uri", "format", "state", ...}`` for a job with a ``--deliver-to`` (None without).
    ``state``: ``waiting`` (the job has not ended), ``pending`` (not written yet; its
    ``attempts``, ``last_error``, ``next_attempt_at``), ``written`` (with the ``manifest``
    and the counts), ``abandoned`` (given up; its ``last_error``)."""
    if job.output_uri is None:
        return None
    shown: dict[str, Any] = {"uri": job.output_uri, "format": job.output_format}
    row = session.execute(
        select(
            Delivery.status,
            Delivery.attempts,
            Delivery.last_error,
            Delivery.next_attempt_at,
            Delivery.finished_at,
            Delivery.result,
        )
        .where(Delivery.job_id == job.id, Delivery.what == "output")
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())  # a retried job: its last end
        .limit(1)
    ).first()
    if row is None or job.finished_at is None:  # not ended, or open again after a retry
        return {**shown, "state": "waiting"}
    status, attempts, last_error, next_at, finished_at, result = row
    state = {"delivered": "written"}.get(status, status)
    shown |= {"state": state, "attempts": attempts}
    if state == "written":
        written = dict(result or {})
        shown |= {
            "written_at": _iso(finished_at),
            "manifest": written.get("manifest"),
            "results": written.get("results"),
            "errors": written.get("errors"),
        }
    else:
        shown["last_error"] = last_error
        if state == "pending":
            shown["next_attempt_at"] = _iso(next_at)
    return shown


def describe_output(output: dict[str, Any]) -> str:
    """The one line ``status`` shows for it."""
    uri, fmt, state = output["uri"], output["format"], output["state"]
    if state == "written":
        return (
            f"results written to {uri} ({fmt}: {output['results']} result(s), "
            f"{output['errors']} error(s))"
        )
    if state == "waiting":
        return f"results go to {uri} ({fmt}) when the job ends"
    if state == "abandoned":
        return f"results not written to {uri}: gave up after {output['attempts']} tries: " + str(
            output.get("last_error")
        )
    tried = output["attempts"]
    if not tried:
        return f"results to be written to {uri} ({fmt}) by the next sweeper pass"
    return (
        f"results not written to {uri} yet: try {tried} failed ({output.get('last_error')}); "
        f"next at {output.get('next_attempt_at')}"
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
