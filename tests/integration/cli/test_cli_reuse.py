"""``--reuse`` through the real CLI processes, on SQLite and PostgreSQL: a catalogue run again
with one new photo runs the model for that photo only; ``submit --reuse`` and the setting
LLAVA_BATCH_REUSE ask the same; status shows the copies apart from the tokens spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import image_bytes, write_images
from tests.integration.cli.conftest import RunCli


def _run(run_cli: RunCli, env: dict[str, str], *args: str, **extra: str) -> list[dict[str, Any]]:
    result = run_cli("run", *args, "--json", env=env, timeout=300, **extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    reused = sum(row["reused_from"] is not None for row in rows)
    summary = f"(0 failed, {reused} reused from earlier results)" if reused else "(0 failed)"
    assert summary in result.stderr, result.stderr
    return rows


def _status(run_cli: RunCli, env: dict[str, str], job_id: str) -> dict[str, Any]:
    result = run_cli("status", job_id, "--json", env=env)
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def _latest_job(run_cli: RunCli, env: dict[str, str]) -> str:
    jobs = json.loads(run_cli("jobs", "--json", env=env).stdout)
    job_id: str = jobs[0]["job_id"]
    return job_id


def test_a_catalogue_run_again_runs_only_its_new_photo(
    run_cli: RunCli, default_db_env: dict[str, str], tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue"
    write_images(catalogue, 3)
    caption = ("caption", str(catalogue), "--max-new-tokens", "4")
    first = {row["input"]: row for row in _run(run_cli, default_db_env, *caption)}
    assert all(row["status"] == "succeeded" and row["usage"] for row in first.values())

    new = catalogue / "new.png"
    new.write_bytes(image_bytes((40, 24), seed=4242))
    second = {row["input"]: row for row in _run(run_cli, default_db_env, *caption, "--reuse")}
    assert set(second) == {*first, str(new)}
    for source, row in first.items():
        assert second[source]["result"] == row["result"]
        assert second[source]["usage"] is None  # a copy: the model spent nothing on it
        assert second[source]["reused_from"] == row["item_id"]
    assert second[str(new)]["usage"]["completion_tokens"] > 0
    assert second[str(new)]["reused_from"] is None

    job_id = _latest_job(run_cli, default_db_env)
    status = _status(run_cli, default_db_env, job_id)
    assert status["counts"]["succeeded"] == 4 and status["reused"] == 3
    assert status["usage"] == second[str(new)]["usage"]  # the new photo's tokens, no others
    text = run_cli("status", job_id, env=default_db_env).stdout
    assert "reused: 3 result(s)" in text

    # submit --reuse keeps the choice with the job: the run that works it reuses everything.
    submitted = run_cli("submit", *caption, "--reuse", "--json", env=default_db_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    resumed = run_cli("run", "--resume", job_id, "--json", env=default_db_env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert {row["input"]: row["result"] for row in rows} == {
        source: row["result"] for source, row in second.items()
    }
    status = _status(run_cli, default_db_env, job_id)
    assert status["reused"] == 4 and status["usage"]["total_tokens"] == 0

    # The setting asks the same of a command that names neither --reuse nor --no-reuse ...
    _run(run_cli, default_db_env, *caption, LLAVA_BATCH_REUSE="true")
    assert _status(run_cli, default_db_env, _latest_job(run_cli, default_db_env))["reused"] == 4
    # ... and --no-reuse overrides it.
    _run(run_cli, default_db_env, *caption, "--no-reuse", LLAVA_BATCH_REUSE="true")
    assert _status(run_cli, default_db_env, _latest_job(run_cli, default_db_env))["reused"] == 0
