"""``llava-batch run`` stopped by Ctrl-C (SIGINT) or SIGTERM, and ``run --resume JOB``: a real
process, a real signal, the real database.

Batches are made slow with the fault hook (``generate_delay_s``) so that a signal lands while a
batch is in flight: the run finishes that batch, records it, leaves the rest queued (nothing
``running``), prints how to resume and exits 130. A second signal stops at once, handing back
what the run holds. A resumed run never runs a finished item again.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_images
from tests.integration.cli.conftest import CLI, RunCli

SLOW = json.dumps({"generate_delay_s": 1.0})


def _start(
    cli_env: dict[str, str], tmp_path: Path, *args: str, faults: str = SLOW
) -> tuple[subprocess.Popen[str], Path]:
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [CLI, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**cli_env, "LLAVA_BATCH_TEST_FAULTS": faults},
        )
    return process, stderr


def _first_result_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()  # results stream: the first batch's come before the end
    assert "\t" in line, line
    return line


def _rest(process: subprocess.Popen[str]) -> str:
    """The rest of stdout, then the exit (``communicate`` with a timeout would skip what
    ``readline`` has already buffered)."""
    assert process.stdout is not None
    rest = process.stdout.read()
    process.wait(timeout=120)
    return rest


def _items(cli_env: dict[str, str], job_id: str) -> dict[str, dict[str, Any]]:
    database = Path(cli_env["LLAVA_BATCH_HOME"]) / "llava-batch.sqlite3"
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, source, status, result_text, finished_at, attempts FROM items "
            "WHERE job_id = ?",
            (job_id,),
        ).fetchall()
    return {row["source"]: dict(row) for row in rows}


def _job_id_from_hint(stderr: str) -> str:
    hints = [line for line in stderr.splitlines() if "llava-batch run --resume " in line]
    assert hints, stderr
    return hints[-1].split("llava-batch run --resume ")[1].split()[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_batch_in_flight_and_leaves_the_job_resumable(
    cli_env: dict[str, str], run_cli: RunCli, tmp_path: Path, sig: signal.Signals
) -> None:
    # Eight batches: the run's two slots have at most two in flight when the signal lands,
    # so some are left to resume even when the signal is taken a batch or two late.
    write_images(tmp_path / "imgs", 16)
    process, stderr_file = _start(
        cli_env, tmp_path, "run", "caption", str(tmp_path / "imgs"), "--batch-size", "2"
    )
    first = _first_result_line(process)
    assert process.poll() is None  # streamed: a result shows while the run goes on
    process.send_signal(sig)
    rest = _rest(process)
    stderr = stderr_file.read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopping after the batch in flight" in stderr
    assert stderr.splitlines()[-1] == "error: interrupted [interrupted]"
    job_id = _job_id_from_hint(stderr)

    items = _items(cli_env, job_id)
    by_status = [row["status"] for row in items.values()]
    assert "running" not in by_status
    assert by_status.count("succeeded") >= 2 and by_status.count("queued") >= 2, by_status
    # Every recorded result was printed, and only those: nothing recorded is lost.
    printed = [line.split("\t")[0] for line in (first + rest).splitlines() if "\t" in line]
    assert sorted(printed) == sorted(s for s, r in items.items() if r["status"] == "succeeded")
    status = json.loads(run_cli("status", job_id, "--json").stdout)
    assert status["status"] == "in_progress" and status["counts"]["running"] == 0

    if sig is not signal.SIGINT:
        return
    before = {s: r for s, r in items.items() if r["status"] == "succeeded"}
    resumed = run_cli("run", "--resume", job_id[:8], "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in resumed.stdout.splitlines()]
    # The job's whole output, in submission order: the earlier results first, unchanged.
    assert [Path(r["input"]).name for r in rows] == [f"img{i:03d}.png" for i in range(16)]
    assert all(r["status"] == "succeeded" for r in rows)
    after = _items(cli_env, job_id)
    for source, row in before.items():  # never run again: same result, same time, one attempt
        assert after[source] == row
        assert row["attempts"] == 1
    status = json.loads(run_cli("status", job_id, "--json").stdout)
    assert status["status"] == "completed" and status["counts"]["succeeded"] == 16


def test_a_second_ctrl_c_stops_at_once_and_hands_back_the_batch_in_flight(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 6)
    process, stderr_file = _start(
        cli_env,
        tmp_path,
        "run",
        "caption",
        str(tmp_path / "imgs"),
        "--batch-size",
        "2",
        faults=json.dumps({"generate_delay_s": 8.0}),
    )
    _first_result_line(process)
    process.send_signal(signal.SIGINT)
    # Once the first is taken (two pending signals would merge into one), while the second
    # batch is generating (8 s):
    deadline = time.monotonic() + 30
    while "stopping after the batch in flight" not in stderr_file.read_text():
        assert time.monotonic() < deadline, stderr_file.read_text()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    _rest(process)
    assert time.monotonic() - stopped < 6, "waited for the batch in flight"
    stderr = stderr_file.read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    job_id = _job_id_from_hint(stderr)
    statuses = [row["status"] for row in _items(cli_env, job_id).values()]
    # Kept (the first batch, and the other slot's if it ended first), and handed back (the
    # batch in flight, and any not started): nothing left running.
    assert len(statuses) == 6 and "running" not in statuses, statuses
    assert statuses.count("succeeded") >= 2 and statuses.count("queued") >= 2, statuses


def test_resume_of_a_finished_job_writes_its_output_and_loads_no_model(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 2)
    done = run_cli("run", "caption", str(tmp_path / "imgs"), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    (job,) = json.loads(run_cli("jobs", "--json").stdout)
    out = tmp_path / "again.jsonl"
    again = run_cli("run", "--resume", job["job_id"], "--format", "jsonl", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert "loading model" not in again.stderr and "nothing left to run" in again.stderr
    assert out.read_text().splitlines() == done.stdout.splitlines()


def test_resume_refusals(run_cli: RunCli) -> None:
    unknown = run_cli("run", "--resume", "0000dead")
    assert unknown.returncode == 3 and "[job_not_found]" in unknown.stderr
    with_command = run_cli("run", "--resume", "0000dead", "caption", "x")
    assert with_command.returncode == 2 and "[invalid_option]" in with_command.stderr
    bare_option = run_cli("run", "--json")
    assert bare_option.returncode == 2 and "[usage_error]" in bare_option.stderr


def test_a_job_on_a_model_chosen_with_model_resumes_only_with_that_model(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Only --model or LLAVA_BATCH_MODEL choose what a run loads, on --resume too: the hint an
    unfinished run prints carries the --model its job needs, and a resume without it is refused
    (``model_not_served``) instead of loading the model the job names."""
    write_images(tmp_path / "imgs", 2)
    # A model this machine cannot load (offline): the job is saved, resumable.
    first = run_cli("run", "caption", str(tmp_path / "imgs"), "--model", "acme/llava")
    assert first.returncode == 7 and "cannot load model 'acme/llava'" in first.stderr
    job_id = _job_id_from_hint(first.stderr)
    assert f"llava-batch run --resume {job_id} --model acme/llava continues it" in first.stderr

    refused = run_cli("run", "--resume", job_id)
    assert refused.returncode == 2 and "[model_not_served]" in refused.stderr, refused.stderr
    assert "loading model" not in refused.stderr

    chosen = run_cli("run", "--resume", job_id, "--model", "acme/llava")
    assert chosen.returncode == 7 and "cannot load model 'acme/llava'" in chosen.stderr
    with_command = run_cli("run", "--model", "tiny-llava", "caption", str(tmp_path / "imgs"))
    assert with_command.returncode == 2 and "[invalid_option]" in with_command.stderr
