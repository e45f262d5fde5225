"""OpenAI-Batch JSONL through the real CLI: ``run batch`` (embedded, SQLite, the tiny model)
with a line that fails alone, and ``submit batch`` / ``run batch`` refusals (exit 2, the line
number, nothing written)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from openai.types.shared import ErrorObject
from sqlalchemy import create_engine, text

from jobs.db import make_session_factory, utcnow
from jobs.fleet import Serving, beat_worker
from tests.helpers import image_bytes, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
}


def _line(custom_id: str, url: str, model: str = "acme/llava", **body: Any) -> str:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
        }
    )


def _rows(home: Path, table: str) -> int:
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    with engine.connect() as conn:
        return int(conn.execute(text(f"select count(*) from {table}")).scalar_one())


def _a_worker_served(run_cli: RunCli, home: Path, model: str) -> None:
    """A worker for ``model`` beat yesterday: the embedded deployment serves it."""
    assert run_cli("jobs", "--json").returncode == 0  # the database, migrated
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    yesterday = utcnow() - timedelta(days=1)
    beat_worker(
        make_session_factory(engine), "gpu@host", Serving(model, None, "none"), now=yesterday
    )
    engine.dispose()


def _blobs(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def test_run_batch_answers_each_request_and_a_web_url_fails_alone(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "photos", 1)
    data = "data:image/png;base64," + base64.b64encode(image_bytes((30, 20), seed=5)).decode()
    schema = {"type": "json_schema", "json_schema": {"name": "count", "schema": SCHEMA}}
    batch = tmp_path / "requests.jsonl"
    batch.write_text(
        "\n".join(
            [
                _line("caption-1", "photos/img000.png", max_tokens=4),
                _line("count-2", data, response_format=schema, temperature=0),
                _line("web-3", "https://example.com/cat.png", max_completion_tokens=4),
            ]
        )
        + "\n"
    )
    # The lines name acme/llava: a label, never what this run loads (see the test below).
    # --model serves the file, unchanged, on the model chosen.
    run = run_cli("run", "batch", str(batch), "--model", "tiny-llava", "--json", timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    by_id = {row["custom_id"]: row for row in rows}
    assert sorted(by_id) == ["caption-1", "count-2", "web-3"]
    assert by_id["caption-1"]["status"] == "succeeded"
    assert by_id["count-2"]["status"] == "succeeded", by_id["count-2"]
    assert isinstance(by_id["count-2"]["result"], dict)
    assert by_id["web-3"]["status"] == "failed"
    assert by_id["web-3"]["error_code"] == "input_scheme_not_allowed"

    (job,) = json.loads(run_cli("jobs", "--json").stdout)
    assert job["model"] == "tiny-llava"
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    written = run_cli(
        "results", job["job_id"], "--format", "openai", "-o", str(out), "--errors", str(errors)
    )
    assert written.returncode == 0, written.stderr
    succeeded = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in succeeded) == ["caption-1", "count-2"]
    (failed,) = [json.loads(line) for line in errors.read_text().splitlines()]
    assert failed["custom_id"] == "web-3" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    error = ErrorObject.model_validate(failed["response"]["body"]["error"])
    assert error.code == "input_scheme_not_allowed" and "never fetched" in error.message


@pytest.mark.parametrize("named", ["hub", "folder"])
def test_run_batch_never_loads_the_model_a_file_names(
    run_cli: RunCli, tmp_path: Path, named: str
) -> None:
    """An input file never chooses a download: its lines' ``body.model`` (a hub repository or a
    local folder) is a label, and only --model or LLAVA_BATCH_MODEL choose what loads. A file
    naming another model is refused before anything is written or loaded, with the commands
    that would run it; it used to be loaded (retrying the hub for minutes offline), and the job
    was left behind when it could not be."""
    write_images(tmp_path / "photos", 1)
    model = "acme/llava" if named == "hub" else str(tmp_path / "weights")
    batch = tmp_path / "requests.jsonl"
    batch.write_text(_line("a", "photos/img000.png", model=model) + "\n")

    refused = run_cli("run", "batch", str(batch), "--json", timeout=300)

    assert_one_line_error(
        refused, 2, "[model_not_served]", "--model tiny-llava", f"--model {model}"
    )
    assert "loading model" not in refused.stderr
    home = tmp_path / "home"
    assert _rows(home, "jobs") == 0 and _rows(home, "items") == 0 and _blobs(home) == []


def test_resume_never_loads_the_model_a_submitted_file_names(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """``submit batch`` makes the file's model the job's (its queue, for the workers serving
    it); ``run --resume`` of that job loads LLAVA_BATCH_MODEL or --model only, and refuses a job
    for another model, naming the command that would load it, instead of loading the model the
    job names."""
    write_images(tmp_path / "photos", 1)
    batch = tmp_path / "requests.jsonl"
    batch.write_text(_line("a", "photos/img000.png") + "\n")
    _a_worker_served(run_cli, tmp_path / "home", "acme/llava")
    submitted = run_cli("submit", "batch", str(batch), "--json", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]

    for extra in ([], ["--model", "tiny-llava"]):
        resumed = run_cli("run", "--resume", job_id, "--json", *extra, timeout=300)
        assert_one_line_error(
            resumed,
            2,
            "[model_not_served]",
            f"llava-batch run --resume {job_id} --model acme/llava",
        )
        assert "loading model" not in resumed.stderr

    status = json.loads(run_cli("status", job_id, "--json").stdout)
    assert status["model"] == "acme/llava" and status["counts"]["queued"] == 1


@pytest.mark.parametrize(
    ("lines", "code", "where"),
    [
        (lambda: [_line("a", "img000.png"), '{"custom_id": "b", "body": '], "manifest_invalid", 2),
        (
            lambda: [_line("a", "img000.png"), _line("b", "img000.png", n=2)],
            "unsupported_parameter",
            2,
        ),
        (
            lambda: [
                _line("a", "img000.png"),
                _line("b", "img000.png"),
                _line("c", "img000.png", model="other/llava"),
            ],
            "model_mismatch",
            3,
        ),
    ],
    ids=["malformed", "n", "two-models"],
)
@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_bad_line_refuses_the_file_with_its_number_and_writes_nothing(
    run_cli: RunCli, tmp_path: Path, lines: Any, code: str, where: int, command: str
) -> None:
    write_images(tmp_path, 1)
    batch = tmp_path / "b.jsonl"
    batch.write_text("\n".join(lines()) + "\n")
    result = run_cli(
        command,
        "batch",
        str(batch),
        "--format" if command == "submit" else "--input-format",
        "openai",
        timeout=300,
    )
    assert_one_line_error(result, 2, f"line {where}", f"[{code}]")
    home = tmp_path / "home"
    assert _rows(home, "jobs") == 0 and _rows(home, "items") == 0
    assert _blobs(home) == []


def test_submit_refuses_a_model_no_worker_serves(run_cli: RunCli, tmp_path: Path) -> None:
    """A hosted model name (never looked up anywhere) or any other no worker of this deployment
    serves: refused at submit with the models it serves, exit 2, nothing written."""
    write_images(tmp_path / "photos", 1)
    batch = tmp_path / "requests.jsonl"
    batch.write_text(_line("a", "photos/img000.png", model="gpt-4o-mini") + "\n")
    refused = run_cli("submit", "batch", str(batch), timeout=120)
    assert_one_line_error(
        refused,
        2,
        "[model_not_served]",
        "'gpt-4o-mini'",
        "served: tiny-llava",
        "--model tiny-llava",
    )
    home = tmp_path / "home"
    assert _rows(home, "jobs") == 0 and _rows(home, "items") == 0 and _blobs(home) == []
