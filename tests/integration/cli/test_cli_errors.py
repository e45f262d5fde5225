"""Bad input and broken surroundings: one clear line, a meaningful exit code, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from tests.services import free_port


def _job_count(home: Path) -> int:
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    with engine.connect() as conn:
        return int(conn.execute(text("select count(*) from jobs")).scalar_one())


def test_missing_path_is_refused_and_nothing_is_written(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "ok", 2)
    result = run_cli("submit", "caption", str(tmp_path / "ok"), str(tmp_path / "nope.jpg"))
    assert_one_line_error(result, 2, "nope.jpg", "source_not_found")
    assert _job_count(tmp_path / "home") == 0


def test_invalid_manifest_line_reports_its_number(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path, 1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"input": "img000.png"}\n{"input": "img000.png", oops}\n')
    result = run_cli("submit", "caption", str(manifest))
    assert_one_line_error(result, 2, "line 2", "manifest_invalid")


def test_prompt_over_the_limit_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    result = run_cli(
        "submit",
        "caption",
        str(tmp_path / "c"),
        "--prompt",
        "x" * 50,
        LLAVA_BATCH_MAX_PROMPT_CHARS="10",
    )
    assert_one_line_error(result, 2, "prompt_too_long")


def test_bad_setting_names_the_variable(run_cli: RunCli) -> None:
    result = run_cli("jobs", LLAVA_BATCH_BATCH_SIZE="0")
    assert_one_line_error(result, 2, "LLAVA_BATCH_BATCH_SIZE", "invalid_settings")
    assert "LLAVA_BATCH_LLAVA_BATCH" not in result.stderr  # the variable, named once


def test_unknown_job_exits_3(run_cli: RunCli) -> None:
    assert_one_line_error(run_cli("status", "0000dead"), 3, "job_not_found")


def test_unreachable_database_exits_5(run_cli: RunCli) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nope"
    assert_one_line_error(run_cli("jobs", LLAVA_BATCH_DATABASE_URL=url), 5, "database_unavailable")


def test_unmigrated_database_says_how_to_fix(run_cli: RunCli, pg_url: str) -> None:
    result = run_cli("jobs", LLAVA_BATCH_DATABASE_URL=pg_url)
    assert_one_line_error(result, 4, "llava-batch db upgrade")


def test_broker_down_at_submit_keeps_a_queued_job(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 3)
    result = run_cli("submit", "caption", str(tmp_path / "c"), "--json")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    assert json.loads(result.stdout)["dispatched"] is False
    status = run_cli("status", job_id, "--json")
    payload = json.loads(status.stdout)
    assert payload["status"] == "queued" and payload["counts"]["queued"] == 3


def test_broker_down_message_is_human(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    result = run_cli("submit", "caption", str(tmp_path / "c"))
    assert result.returncode == 0
    assert "dispatch pending" in result.stderr
    assert result.stdout.strip().splitlines()[-1].count("-") == 4  # the job id, last line


def test_worker_refuses_a_checkpoint_with_only_pickle_weights(
    run_cli: RunCli, tmp_path: Path
) -> None:
    model_dir = tmp_path / "pickled-llava"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    result = run_cli("worker", LLAVA_BATCH_MODEL=str(model_dir))
    assert_one_line_error(result, 7, "model_load_error", "safetensors")


def test_broker_credentials_never_reach_the_terminal(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = run_cli(
        "submit",
        "caption",
        str(tmp_path / "c"),
        LLAVA_BATCH_BROKER_URL=url,
        LLAVA_BATCH_LOG_LEVEL="DEBUG",
    )
    assert result.returncode == 0
    assert "dispatch pending" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_misspelt_setting_is_refused_with_a_suggestion(run_cli: RunCli) -> None:
    result = run_cli("jobs", LLAVA_BATCH_BATCHSIZE="4")
    assert_one_line_error(result, 2, "LLAVA_BATCH_BATCHSIZE", "LLAVA_BATCH_BATCH_SIZE")
