"""``submit --wait`` and ``wait`` (``jobs.cli.views.watch``) poll ten times a second through the
first second, then once a second: a job that ends within a second is seen ending within a tenth
of a second, not up to a second later, and after it the polls fall on whole seconds as before,
so a watch of hours still reads the database once a second and sees no job end later."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import views
from jobs.cli.context import Context
from jobs.db import SessionFactory
from jobs.lifecycle.requests import cancel_job
from jobs.states import JobStatus
from storage import Blobs
from tests.helpers import make_settings, submit_captions


def test_a_watch_polls_every_tenth_of_a_second_for_a_second_then_every_second(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id, _ = submit_captions(session_factory, blobs, tmp_path, n=2)
    ctx = Context(make_settings(), session_factory.kw["bind"], session_factory, blobs)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 12:  # the job ends in the twelfth wait
            assert cancel_job(session_factory, job_id) == JobStatus.cancelled

    monkeypatch.setattr(views.time, "sleep", sleep)
    ended = views.watch(ctx, job_id)
    assert ended.status == JobStatus.cancelled
    assert slept == [0.1] * 10 + [1.0, 1.0]
