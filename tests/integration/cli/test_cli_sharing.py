"""``--priority``, ``--completion-window``, ``llava-batch priority`` and ``retry --only``
through the installed CLI, on the embedded default (SQLite): what a user sets, what ``status``,
``jobs`` and ``results`` show, and the one-line refusals."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def _status(run_cli: RunCli, job_id: str) -> dict[str, object]:
    return dict(json.loads(_ok(run_cli("status", job_id, "--json"))))


def _expire_now(home: Path, job_id: str) -> None:
    """As if the window had passed: its end moved an hour back."""
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            text("update jobs set expires_at = :t where id = :id"), {"t": past, "id": job_id}
        )
    engine.dispose()


def test_a_submit_with_a_priority_and_a_window_shows_them_and_its_turn(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 3)
    job_id = _ok(
        run_cli(
            "submit",
            "caption",
            str(tmp_path / "in"),
            "--priority",
            "7",
            "--completion-window",
            "90m",
        )
    ).strip()
    shown = _status(run_cli, job_id)
    assert shown["priority"] == 7 and shown["completion_window_seconds"] == 5400
    assert isinstance(shown["expires_at"], str)
    turn = shown["turn"]
    assert isinstance(turn, dict)
    assert (turn["position"], turn["active_jobs"], turn["share"], turn["ahead"]) == (1, 1, 1.0, 0)
    text_view = _ok(run_cli("status", job_id))
    assert "priority 7" in text_view and "turn 1 of 1, share 100%" in text_view

    # A second job of a higher priority goes first: the first one waits behind its items.
    write_images(tmp_path / "urgent", 2, prefix="u")
    _ok(run_cli("submit", "caption", str(tmp_path / "urgent"), "--priority", "9"))
    turn = _status(run_cli, job_id)["turn"]
    assert isinstance(turn, dict)
    assert (turn["position"], turn["share"], turn["ahead"]) == (2, 0.0, 2)

    # A negative priority is a value, and the job goes last; `jobs` shows it.
    assert "priority 7 -> -5" in run_cli("priority", job_id[:8], "-5").stderr
    assert _status(run_cli, job_id)["priority"] == -5
    listed = {job["job_id"]: job for job in json.loads(_ok(run_cli("jobs", "--json")))}
    assert listed[job_id]["priority"] == -5
    table = _ok(run_cli("jobs", COLUMNS="200"))
    assert "priority" in table and "-5" in table


def test_a_bad_priority_or_window_is_refused_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    folder = str(tmp_path / "in")
    assert_one_line_error(
        run_cli("submit", "caption", folder, "--completion-window", "9x"),
        2,
        "--completion-window '9x' is not a period",
    )
    assert_one_line_error(
        run_cli("submit", "caption", folder, "--completion-window", "30s"), 2, "out of range"
    )
    assert_one_line_error(run_cli("submit", "caption", folder, "--priority", "101"), 2)
    assert_one_line_error(
        run_cli("submit", "caption", folder, env={"LLAVA_BATCH_COMPLETION_WINDOW": "forever"}), 2
    )


def test_an_expired_job_is_retried_with_only_and_written_as_openai_does(
    run_cli: RunCli, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    home = Path(cli_env["LLAVA_BATCH_HOME"])
    write_images(tmp_path / "in", 2)
    job_id = _ok(
        run_cli(
            "submit", "caption", str(tmp_path / "in"), env={"LLAVA_BATCH_COMPLETION_WINDOW": "2h"}
        )
    ).strip()
    assert _status(run_cli, job_id)["completion_window_seconds"] == 7200
    _expire_now(home, job_id)
    _ok(run_cli("sweep", "--once"))
    shown = _status(run_cli, job_id)
    assert shown["status"] == "expired" and shown["counts"]["expired"] == 2  # type: ignore[index]

    errors = tmp_path / "errors.jsonl"
    run_cli("results", job_id, "--format", "openai", "--errors", str(errors))
    lines = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [line["error"]["code"] for line in lines] == ["batch_expired"] * 2

    assert "0 failed item(s) re-queued" in run_cli("retry", job_id, "--only", "failed").stderr
    assert "2 failed or expired item(s) re-queued" in run_cli("retry", job_id).stderr
    shown = _status(run_cli, job_id)
    assert shown["status"] == "queued" and shown["counts"]["queued"] == 2  # type: ignore[index]
    assert str(shown["expires_at"]) > datetime.now(UTC).isoformat()


def test_a_schedules_jobs_get_its_priority_and_window(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "shots", 2)
    _ok(
        run_cli(
            "schedule",
            "add",
            "urgent",
            "caption",
            str(tmp_path / "shots"),
            "--every",
            "15m",
            "--priority",
            "4",
            "--completion-window",
            "1h",
        )
    )
    job_id = _ok(run_cli("schedule", "run-now", "urgent")).strip()
    shown = _status(run_cli, job_id)
    assert shown["priority"] == 4 and shown["completion_window_seconds"] == 3600


def test_an_openai_batch_file_takes_a_priority_and_a_window_as_a_hosted_batch_does(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """``submit batch FILE`` is the OpenAI/manifest reader's command: its job options are the
    batch's (OpenAI's ``completion_window`` is ``24h``)."""
    image = write_images(tmp_path / "img", 1)[0]
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "tiny-llava",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {"type": "image_url", "image_url": {"url": str(image)}},
                    ],
                }
            ],
        },
    }
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(line) + "\n")
    job_id = _ok(
        run_cli("submit", "batch", str(requests), "--priority", "2", "--completion-window", "24h")
    ).strip()
    shown = _status(run_cli, job_id)
    assert shown["priority"] == 2 and shown["completion_window_seconds"] == 86400
