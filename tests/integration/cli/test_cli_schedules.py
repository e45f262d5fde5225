"""``llava-batch schedule add NAME caption|extract|ask SOURCE …`` through the installed CLI: one
command per kind with ``submit``'s options and codes, ``list`` shows the kind, ``run-now`` over a
local folder, and the form from before kinds (``--source s3://… --schema``) still adds an
extraction."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import INVOICE_SCHEMA, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def _schedules(home: Path) -> int:
    if not (home / "llava-batch.sqlite3").exists():  # refused before the database was opened
        return 0
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    with engine.connect() as conn:
        count = int(conn.execute(text("select count(*) from schedules")).scalar_one())
    engine.dispose()
    return count


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def test_a_schedule_of_each_kind_is_added_listed_and_run(run_cli: RunCli, tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    write_images(folder, 2)
    schema = tmp_path / "invoice.schema.json"
    schema.write_text(json.dumps(INVOICE_SCHEMA))
    every = ["--every", "15m"]
    _ok(
        run_cli(
            "schedule",
            "add",
            "shots",
            "caption",
            str(folder),
            *every,
            "--prompt",
            "Name it.",
            "--reuse",
        )
    )
    other = run_cli(
        "schedule", "add", "other", "caption", str(folder), *every, "--model", "acme/llava"
    )
    _ok(other)
    assert "no live worker serves the model acme/llava" in " ".join(other.stderr.split())
    _ok(
        run_cli(
            "schedule", "add", "docs", "extract", "s3://acme/in/", "--schema", str(schema), *every
        )
    )
    _ok(
        run_cli(
            "schedule", "add", "qa", "ask", "s3://acme/qa/", "-q", "Brand?", "--cron", "0 * * * *"
        )
    )
    # The form from before schedules had kinds: an extraction over an S3 prefix.
    _ok(
        run_cli(
            "schedule", "add", "old", "--source", "s3://acme/old/", "--schema", str(schema), *every
        )
    )
    listed = {row["name"]: row for row in json.loads(_ok(run_cli("schedule", "list", "--json")))}
    assert {name: row["kind"] for name, row in listed.items()} == {
        "docs": "extract",
        "old": "extract",
        "other": "caption",
        "qa": "ask",
        "shots": "caption",
    }
    assert listed["shots"]["source"] == str(folder) and listed["old"]["source"] == "s3://acme/old/"
    assert (listed["shots"]["model"], listed["other"]["model"]) == ("tiny-llava", "acme/llava")
    assert (listed["shots"]["reuse"], listed["other"]["reuse"]) == (True, False)
    assert "caption" in _ok(run_cli("schedule", "list"))

    job_id = _ok(run_cli("schedule", "run-now", "shots")).strip()
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'llava-batch.sqlite3'}")
    with engine.connect() as conn:
        params = conn.execute(text("select params from jobs where id = :j"), {"j": job_id})
        assert json.loads(params.scalar_one())["reuse"] is True  # its job copies earlier results
    engine.dispose()
    status = json.loads(_ok(run_cli("status", job_id, "--json")))
    assert (status["kind"], status["name"], status["total"]) == ("caption", "shots", 2)
    assert _ok(run_cli("schedule", "run-now", "shots")).strip() == ""  # nothing new, no job
    routed = _ok(run_cli("schedule", "run-now", "other")).strip()  # the schedule's own model
    assert json.loads(_ok(run_cli("status", routed, "--json")))["model"] == "acme/llava"


@pytest.mark.parametrize(
    ("kind", "options", "code"),
    [
        ("ask", [], "invalid_questions"),
        ("ask", ["-q", "fine", "-q", " "], "empty_prompt"),
        ("caption", ["--prompt", ""], "empty_prompt"),
        ("caption", ["--batch-size", "100000"], "invalid_option"),
        ("extract", ["--schema", "{schema}", "--pages", "3-1"], "invalid_pages"),
        ("extract", ["--schema", "{bad_schema}"], "schema_invalid"),
    ],
)
def test_a_schedule_submit_would_refuse_is_refused_with_its_code_and_nothing_written(
    run_cli: RunCli, tmp_path: Path, kind: str, options: list[str], code: str
) -> None:
    folder = tmp_path / "shots"
    write_images(folder, 1)
    (tmp_path / "s.json").write_text(json.dumps(INVOICE_SCHEMA))
    (tmp_path / "bad.json").write_text('{"type": "nonsense"}')
    options = [
        o.format(schema=tmp_path / "s.json", bad_schema=tmp_path / "bad.json") for o in options
    ]
    submitted = run_cli("submit", kind, str(folder), *options)
    assert_one_line_error(submitted, 2, f"[{code}]")
    added = run_cli("schedule", "add", "bad", kind, str(folder), "--every", "15m", *options)
    assert_one_line_error(added, 2, f"[{code}]")
    assert _schedules(tmp_path / "home") == 0


def test_a_schedule_over_a_missing_folder_or_a_file_is_refused(
    run_cli: RunCli, tmp_path: Path
) -> None:
    (photo,) = write_images(tmp_path, 1)
    missing = run_cli("schedule", "add", "a", "caption", str(tmp_path / "nope"), "--every", "1h")
    assert_one_line_error(missing, 2, "[source_not_found]")
    one_file = run_cli("schedule", "add", "b", "caption", str(photo), "--every", "1h")
    assert_one_line_error(one_file, 2, "[invalid_source]")
    assert _schedules(tmp_path / "home") == 0
