"""``--retain``, ``llava-batch delete`` and ``llava-batch purge`` through the installed CLI on
the embedded default (SQLite, local store): what a user sets and sees, what is deleted (rows
and the stored inputs no other job uses), and the one-line refusals with their exit status."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def _stored_inputs(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs").rglob("*") if p.is_file()}


def _sql(home: Path, statement: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    with engine.begin() as conn:
        result = conn.execute(text(statement), params)
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


def test_retain_shows_its_date_and_delete_removes_the_job_and_its_own_inputs(
    run_cli: RunCli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(cli_env["LLAVA_BATCH_HOME"])
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b", 1)  # the same first image as a's: a shared stored input
    # A queued job (not run) references it: a job's inputs are kept whatever its state.
    kept_id = _ok(run_cli("submit", "caption", str(tmp_path / "b"))).strip()
    before = _stored_inputs(home)
    job_id = _ran(run_cli("run", "caption", str(tmp_path / "a"), "--retain", "30d"))
    shown = json.loads(_ok(run_cli("status", job_id, "--json")))
    assert shown["retain_seconds"] == 30 * 86400
    until = datetime.fromisoformat(shown["retained_until"])
    assert until - datetime.fromisoformat(shown["finished_at"]) == timedelta(days=30)
    assert "retained until" in _ok(run_cli("status", job_id))
    assert "retained until" in _ok(run_cli("jobs", COLUMNS="200"))
    assert json.loads(_ok(run_cli("status", kept_id, "--json")))["retained_until"] is None
    own = _stored_inputs(home) - before
    assert len(own) == 2 and len(before) == 1  # a's two other images; its first is b's too

    assert f"job {job_id}: deleted" in _ok_err(run_cli("delete", job_id[:8]))
    assert_one_line_error(run_cli("status", job_id), 3, "job_not_found")
    assert _stored_inputs(home) == before  # its own inputs went, the shared one stayed
    assert _sql(home, "select count(*) from items where job_id = :j", j=job_id) == [(0,)]
    assert json.loads(_ok(run_cli("status", kept_id, "--json")))["total"] == 1


def _ran(result: subprocess.CompletedProcess[str]) -> str:
    """The id of the job a ``run`` ended."""
    found = re.search(r"^job ([0-9a-f-]{36})", _ok_err(result), re.MULTILINE)
    assert found, result.stderr
    return found.group(1)


def _ok_err(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stderr


def test_delete_refuses_a_job_that_has_not_ended_and_purge_deletes_what_is_due(
    run_cli: RunCli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    home = Path(cli_env["LLAVA_BATCH_HOME"])
    write_images(tmp_path / "in", 2)
    queued = _ok(run_cli("submit", "caption", str(tmp_path / "in"), "--retain", "1h")).strip()
    assert_one_line_error(run_cli("delete", queued), 8, "job_not_finished", "cancel it first")
    assert json.loads(_ok(run_cli("status", queued, "--json")))["status"] == "queued"
    assert_one_line_error(run_cli("delete", "nope-nope"), 3, "job_not_found")
    assert_one_line_error(
        run_cli("submit", "caption", str(tmp_path / "in"), "--retain", "soon"),
        2,
        "invalid_option",
        "--retain",
    )

    _ok(run_cli("cancel", queued))
    assert json.loads(_ok(run_cli("purge", "--json")))["jobs_deleted"] == 0  # not due yet
    past = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None)
    _sql(home, "update jobs set retained_until = :t where id = :j", t=past, j=queued)
    report = json.loads(_ok(run_cli("purge", "--json")))
    assert (report["jobs_deleted"], report["items_deleted"], report["finished"]) == (1, 2, True)
    assert_one_line_error(run_cli("status", queued), 3, "job_not_found")
    assert _stored_inputs(home) == set()


def test_the_default_retention_is_a_setting_and_off_unless_set(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 1)
    plain = _ok(run_cli("submit", "caption", str(tmp_path / "in"))).strip()
    assert json.loads(_ok(run_cli("status", plain, "--json")))["retain_seconds"] is None
    kept = _ok(run_cli("submit", "caption", str(tmp_path / "in"), LLAVA_BATCH_RETAIN="12h"))
    shown = json.loads(_ok(run_cli("status", kept.strip(), "--json")))
    assert shown["retain_seconds"] == 12 * 3600
    assert_one_line_error(run_cli("jobs", LLAVA_BATCH_RETAIN="forever"), 2, "LLAVA_BATCH_RETAIN")
