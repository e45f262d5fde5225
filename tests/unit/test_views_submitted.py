"""What submit prints for a job whose rows were not all written (a cancel during a big submit,
or the same key while another submit is still writing): never "submitted N item(s)" alone."""

from __future__ import annotations

import json

import pytest

from jobs.cli import views
from jobs.submit.request import SubmitResult


def _shown(capsys: pytest.CaptureFixture[str], result: SubmitResult, json_out: bool) -> str:
    views.show_submitted(result, "tiny-llava", json_out=json_out)
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_a_job_cancelled_while_it_was_written_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    cut = SubmitResult("job-1", item_count=4, dispatched=True, complete=False)
    text = " ".join(_shown(capsys, cut, json_out=False).split())
    assert "cancelled while it was being submitted: 4 item(s) were written" in text
    assert "submitted 4 item(s)" not in text
    assert json.loads(_shown(capsys, cut, json_out=True))["complete"] is False


def test_the_same_key_during_a_submit_says_the_job_is_still_being_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    writing = SubmitResult("job-1", item_count=2, dispatched=True, existing=True, complete=False)
    text = " ".join(_shown(capsys, writing, json_out=False).split())
    assert "still being submitted: 2 item(s) written so far" in text
    whole = SubmitResult("job-1", item_count=9, dispatched=True)
    assert "submitted 9 item(s)" in _shown(capsys, whole, json_out=False)
    assert json.loads(_shown(capsys, whole, json_out=True))["complete"] is True


def test_items_failed_at_submit_and_a_pending_dispatch_are_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    some_failed = SubmitResult("job-1", item_count=5, dispatched=True, failed=2)
    text = " ".join(_shown(capsys, some_failed, json_out=False).split())
    assert "submitted 5 item(s)" in text and "2 of them failed at once" in text
    assert json.loads(_shown(capsys, some_failed, json_out=True))["failed"] == 2
    # The same key, after a first submit whose broker was down: the sweeper still has to send.
    pending = SubmitResult("job-1", item_count=5, dispatched=False, existing=True)
    text = " ".join(_shown(capsys, pending, json_out=False).split())
    assert "not published when it was submitted" in text and "unreachable;" not in text
    assert json.loads(_shown(capsys, pending, json_out=True))["dispatched"] is False
