"""What ``jobs.openai_batch`` maps onto OpenAI's names: the HTTP status of each item error code
(the table of docs/openai-format.md is the code's, both ways, and covers every code a failed
item can hold) and a job's batch status in the states that pass in an instant."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.db import Job
from jobs.errors import ItemErrorCode
from jobs.openai_batch import STATUS_CODES, batch_status, status_code
from jobs.queries import JobProgress
from jobs.states import ItemStatus, JobStatus

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "openai-format.md").read_text("utf-8")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _documented_status_codes() -> dict[str, int]:
    table = PAGE[PAGE.index("| status | item error codes |") :].splitlines()[2:]
    documented: dict[str, int] = {}
    for row in table:
        if not row.startswith("|"):
            break
        status, codes = (cell.strip() for cell in row.strip("|").split("|"))
        for code in re.findall(r"`([a-z_]+)`", codes):
            assert code not in documented, code
            documented[code] = int(status)
    return documented


def test_the_status_table_of_the_docs_is_the_codes() -> None:
    assert _documented_status_codes() == STATUS_CODES


def test_every_code_a_failed_item_holds_has_a_status() -> None:
    # batch_expired is an expired item's, written as OpenAI's batch-level error instead.
    failing = {code.value for code in ItemErrorCode} - {ItemErrorCode.batch_expired}
    assert set(STATUS_CODES) == failing
    assert all(400 <= status < 600 for status in STATUS_CODES.values())
    assert status_code("a_code_from_a_later_version") == 500


def _progress(queued: int = 0, running: int = 0, succeeded: int = 0) -> JobProgress:
    counts = {state.value: 0 for state in ItemStatus}
    counts.update(queued=queued, running=running, succeeded=succeeded)
    return JobProgress(
        id="j",
        name=None,
        kind="caption",
        status="queued",
        model="m",
        created_at=NOW,
        started_at=None,
        finished_at=None,
        counts=counts,
        items_per_second=None,
        eta_seconds=None,
    )


@pytest.mark.parametrize(
    ("status", "being_written", "started", "progress", "expected"),
    [
        (JobStatus.queued, True, False, _progress(queued=5), "validating"),
        (JobStatus.in_progress, True, True, _progress(queued=5), "in_progress"),
        (JobStatus.queued, False, False, _progress(queued=5), "in_progress"),
        (JobStatus.in_progress, False, True, _progress(running=1), "in_progress"),
        (JobStatus.in_progress, False, True, _progress(succeeded=3), "finalizing"),
        (JobStatus.completed, False, True, _progress(succeeded=3), "completed"),
        (JobStatus.failed, False, True, _progress(), "failed"),
        (JobStatus.expired, False, True, _progress(), "expired"),
        (JobStatus.cancelling, False, True, _progress(running=1), "cancelling"),
        (JobStatus.cancelled, True, False, _progress(), "cancelled"),
    ],
)
def test_job_states_map_onto_batch_statuses(
    status: JobStatus, being_written: bool, started: bool, progress: JobProgress, expected: str
) -> None:
    job = Job(
        status=status,
        submit_lease_expires_at=NOW + timedelta(minutes=1) if being_written else None,
        started_at=NOW if started else None,
    )
    assert batch_status(job, progress) == expected
