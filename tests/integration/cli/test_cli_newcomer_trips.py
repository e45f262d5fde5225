"""What a newcomer tripped on (issue 25, points 8-10), through the real ``llava-batch``, on
PostgreSQL and SQLite: ``status --watch`` off a terminal and ``--timeout``, ``submit --wait``'s
stdout, ``results | head``, ``sweep``'s lines, no rate or ETA for a job no worker serves, how a
job on the embedded default will run, a token budget beyond the model's context, and ``retry``
of only the failures that can succeed again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobs.db import Item
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import open_blobs
from tests.helpers import make_resources, migrated_session_factory, write_images
from tests.integration.cli.conftest import (
    CLI,
    RunCli,
    assert_one_line_error,
    run_into_a_closed_pipe,
)
from workers.local import run_job_locally, submit_locally, work_locally


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def _submit(run_cli: RunCli, db_env: dict[str, str], folder: Path, *extra: str) -> str:
    return _ok(run_cli("submit", "caption", str(folder), *extra, env=db_env)).splitlines()[-1]


def _local_job(
    db_env: dict[str, str], tmp_path: Path, *, broken: int = 0, stop_after: int | None = None
) -> str:
    """A caption job of three images (and ``broken`` files that are no image) run here with the fake
    engine, two items a batch; ``stop_after``: that many batches, the rest left queued."""
    write_images(tmp_path / "imgs", 3)
    for n in range(broken):
        (tmp_path / "imgs" / f"broken{n}.png").write_bytes(b"not an image at all")
    sf = migrated_session_factory(db_env["LLAVA_BATCH_DATABASE_URL"])
    blobs = open_blobs(db_env["LLAVA_BATCH_STORAGE_URL"])
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=2)
    request = SubmitRequest.of("caption", [str(tmp_path / "imgs")], "tiny-llava", batch_size=2)
    batches: list[object] = []
    stop = None if stop_after is None else (lambda: len(batches) >= stop_after)
    return run_job_locally(
        request,
        res,
        max_prompt_chars=1000,
        on_batch=lambda *report: batches.append(report),
        should_stop=stop,
    ).job_id


def _status(run_cli: RunCli, db_env: dict[str, str], job_id: str) -> dict[str, Any]:
    return dict(json.loads(_ok(run_cli("status", job_id, "--json", env=db_env))))


# --- 8: --watch off a terminal, --timeout, submit --wait's stdout -------------------------------


def test_watch_off_a_terminal_prints_progress_lines_and_times_out(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 2)
    job_id = _submit(run_cli, db_env, tmp_path / "c")  # no worker: it never ends

    result = run_cli("status", job_id, "--watch", "--timeout", "6s", env=db_env)

    assert_one_line_error(result, 9, "[wait_timeout]", job_id, "6s")
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 2, result.stderr  # at once, then every few seconds
    assert "0/2 items done" in lines[0] and "waiting for a worker" in lines[0], lines
    assert result.stdout == ""


def test_timeout_goes_with_watch_or_wait(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    job_id = _submit(run_cli, db_env, tmp_path / "c")
    assert_one_line_error(
        run_cli("status", job_id, "--timeout", "5s", env=db_env), 2, "invalid_option", "--watch"
    )
    assert_one_line_error(
        run_cli("submit", "caption", str(tmp_path / "c"), "--timeout", "5s", env=db_env),
        2,
        "invalid_option",
        "--wait",
    )
    assert_one_line_error(
        run_cli("status", job_id, "--watch", "--timeout", "soon", env=db_env),
        2,
        "invalid_option",
        "--timeout",
    )


def test_submit_wait_keeps_the_stdout_contract(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    """The job id last, or one JSON document: the job's end goes to stderr. Empty inputs fail
    at submit, so the job ends at once (failed: exit 6)."""
    for n in range(2):
        (tmp_path / "empty" / f"{n}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "empty" / f"{n}.jpg").write_bytes(b"")

    as_json = run_cli("submit", "caption", str(tmp_path / "empty"), "--wait", "--json", env=db_env)
    assert as_json.returncode == 6, as_json.stderr
    document = json.loads(as_json.stdout)  # one document: two would be "Extra data"
    assert document["failed"] == 2
    assert f"job {document['job_id']}" in as_json.stderr and "failed" in as_json.stderr

    as_text = run_cli(
        "submit", "caption", str(tmp_path / "empty"), "--wait", "--idempotency-key", "t",
        env=db_env,
    )  # fmt: skip
    assert as_text.returncode == 6, as_text.stderr
    (job_id,) = as_text.stdout.splitlines()  # the job id, and nothing after it
    assert _status(run_cli, db_env, job_id)["status"] == "failed"


def test_submit_wait_times_out_with_the_id_on_stdout(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    result = run_cli(
        "submit", "caption", str(tmp_path / "c"), "--wait", "--timeout", "2s", env=db_env
    )
    assert_one_line_error(result, 9, "[wait_timeout]")
    (job_id,) = result.stdout.splitlines()
    assert job_id in result.stderr.splitlines()[-1]
    assert _status(run_cli, db_env, job_id)["status"] == "queued"  # it goes on


# --- 9: results | head, sweep's lines, no rate without a worker, the embedded default ----------


def test_results_into_a_closed_pipe_exit_quietly_as_a_filter(
    db_env: dict[str, str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    job_id = _local_job(db_env, tmp_path)
    for args in (["results", job_id], ["results", job_id, "--format", "openai"]):
        result = run_into_a_closed_pipe({**cli_env, **db_env}, *args)
        assert result.returncode == 141, result.stderr  # 128 + SIGPIPE, as a shell has `cat`'s
        assert result.stderr == ""


def test_results_piped_into_head_in_a_shell(
    db_env: dict[str, str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    job_id = _local_job(db_env, tmp_path)
    done = subprocess.run(
        ["bash", "-c", f'"{CLI}" results {job_id} | head -n 1; echo "${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        env={**cli_env, **db_env},
        timeout=120,
    )
    assert len(done.stdout.splitlines()) == 1
    assert json.loads(done.stdout)["status"] == "succeeded"
    # All of it fits the pipe, or the reader went first: quiet either way.
    assert done.stderr.strip() in ("0", "141"), done.stderr


def test_sweep_prints_a_line_per_pass_for_people_and_json_for_machines(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    _ok(run_cli("db", "upgrade", env=db_env))
    human = run_cli("sweep", "--once", env=db_env)
    assert human.returncode == 0, human.stderr
    (line,) = [line for line in human.stderr.splitlines() if line.startswith("sweep pass: ")]
    assert "Report(" not in human.stderr and "=" not in line, line

    machine = run_cli("sweep", "--once", "--json", env=db_env)
    assert machine.returncode == 0, machine.stderr
    (document,) = [json.loads(one) for one in machine.stdout.splitlines()]
    assert document["finalised"] == 0 and document["purged"]["jobs_deleted"] == 0
    assert "sweep pass" not in machine.stdout


def test_status_of_a_job_no_worker_serves_shows_no_rate_or_eta(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    """Its run stopped after a batch (as ``run`` interrupted would): half done, the rest
    queued, nothing serving it. A rate from its past promised an end that was not coming."""
    job_id = _local_job(db_env, tmp_path, stop_after=1)

    shown = _status(run_cli, db_env, job_id)
    assert shown["status"] == "in_progress" and shown["counts"]["succeeded"] == 2, shown
    assert shown["items_per_second"] is None and shown["eta_seconds"] is None
    assert shown["waiting_for_worker"] is True

    text = _ok(run_cli("status", job_id, env=db_env))
    assert "2/3 done" in text and "items/s" not in text and "ETA -" in text, text


def test_submit_on_the_embedded_default_says_how_the_job_will_run(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    embedded = run_cli("submit", "caption", str(tmp_path / "c"))  # SQLite under the home dir
    job_id = _ok(embedded).splitlines()[-1]
    said = " ".join(embedded.stderr.split())
    assert f"llava-batch run --resume {job_id}" in said, said
    assert "llava-batch worker" in said

    deployed = run_cli("submit", "caption", str(tmp_path / "c"), env=db_env)  # a deployment's
    assert deployed.returncode == 0, deployed.stderr
    assert "run --resume" not in deployed.stderr
    assert "no live worker serves the model tiny-llava" in " ".join(deployed.stderr.split())


# --- 10: a budget beyond the context, retry of what can succeed again --------------------------


def test_max_new_tokens_beyond_the_context_is_refused_at_submit(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    folder = str(tmp_path / "c")
    result = run_cli("submit", "caption", folder, "--max-new-tokens", "2000", env=db_env)
    assert_one_line_error(result, 2, "invalid_option", "1024")  # the tiny model's context

    checkpoint = tmp_path / "my-llava"  # a local checkpoint: its config says
    checkpoint.mkdir()
    config = {"model_type": "llava", "text_config": {"max_position_embeddings": 512}}
    (checkpoint / "config.json").write_text(json.dumps(config))
    model = ["--model", str(checkpoint)]
    refused = run_cli("submit", "caption", folder, *model, "--max-new-tokens", "600", env=db_env)
    assert_one_line_error(refused, 2, "invalid_option", "512")
    assert json.loads(_ok(run_cli("jobs", "--json", env=db_env))) == []  # nothing written

    _submit(run_cli, db_env, tmp_path / "c", *model, "--max-new-tokens", "400")
    # A model this machine has no config of (a hosted name) is never looked up: the worker's
    # check stays.
    _submit(run_cli, db_env, tmp_path / "c", "--model", "gpt-4o-mini", "--max-new-tokens", "2000")


def test_retry_requeues_only_failures_that_can_succeed_again(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    """One item fails ``unsupported_format`` (text, not an image: it would again), one
    ``input_not_found`` (its stored input was deleted before a worker read it: put back, it
    succeeds)."""
    write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image at all")
    sf = migrated_session_factory(db_env["LLAVA_BATCH_DATABASE_URL"])
    blobs = open_blobs(db_env["LLAVA_BATCH_STORAGE_URL"])
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=4)
    request = SubmitRequest.of("caption", [str(tmp_path / "imgs")], "tiny-llava", batch_size=4)
    queue, submitted = submit_locally(request, res, max_prompt_chars=1000)
    job_id = submitted.job_id
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq))
        gone = next(item for item in items if not item.source.endswith("broken.png"))
        gone_id, gone_uri = gone.id, gone.input_uri
    blobs.delete_stored([gone_uri])
    work_locally(job_id, res, queue)

    def codes() -> dict[str, str | None]:
        with sf() as session:
            rows = session.execute(select(Item.id, Item.status, Item.error_code)).all()
        return {row.id: f"{row.status} {row.error_code}" for row in rows}

    before = codes()
    assert before[gone_id] == "failed input_not_found"
    assert sorted(before.values()).count("failed unsupported_format") == 1

    retried = run_cli("retry", job_id, env=db_env)
    assert retried.returncode == 0, retried.stderr
    said = " ".join(retried.stderr.split())
    assert "1 failed or expired item(s) re-queued" in said, said
    assert "1 failed item(s) skipped" in said and "unsupported_format 1" in said, said
    assert "--all" in said
    after = codes()
    assert after[gone_id] == "queued None"
    assert "failed unsupported_format" in after.values()

    everything = run_cli("retry", job_id, "--all", env=db_env)
    assert everything.returncode == 0, everything.stderr
    assert "1 failed or expired item(s) re-queued" in everything.stderr
    assert "skipped" not in everything.stderr
    assert sorted(codes().values()) == ["queued None", "queued None", "succeeded None"]


def test_retry_of_only_failures_that_would_repeat_leaves_the_job_ended(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    job_id = _local_job(db_env, tmp_path, broken=1)
    assert _status(run_cli, db_env, job_id)["status"] == "completed"

    retried = run_cli("retry", job_id, env=db_env)
    assert retried.returncode == 0, retried.stderr
    assert "0 failed or expired item(s) re-queued" in retried.stderr
    assert "unsupported_format 1" in retried.stderr
    shown = _status(run_cli, db_env, job_id)
    assert shown["status"] == "completed" and shown["finished_at"] is not None
    assert shown["counts"]["failed"] == 1
