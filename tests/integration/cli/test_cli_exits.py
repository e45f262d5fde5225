"""One error boundary: usage errors exit 2 with the usage, ``--version`` works, and every exit
status in ``jobs.errors.ExitCode`` (the one table, which docs/errors.md copies) is reached end to
end through the installed ``llava-batch``, with one ``error: <sentence> [<code>]`` line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from jobs.errors import ExitCode
from tests.helpers import write_images
from tests.integration.cli.conftest import (
    CLI,
    RunCli,
    assert_one_line_error,
    run_into_a_closed_pipe,
)
from tests.services import free_port

Result = subprocess.CompletedProcess[str]


def assert_usage_error(result: Result, *words: str) -> None:
    assert_one_line_error(result, 2, "usage_error", *words)
    assert "Usage: llava-batch" in result.stdout + result.stderr


# --- usage errors: exit 2, the usage shown, never "internal error" ---------------------------


def test_unknown_flag_prints_usage_and_exits_2(run_cli: RunCli) -> None:
    assert_usage_error(run_cli("status", "--bogus", "x"), "--bogus")
    assert_usage_error(run_cli("submit", "caption", "--bogus", "x"), "--bogus")


def test_missing_argument_prints_usage_and_exits_2(run_cli: RunCli) -> None:
    assert_usage_error(run_cli("status"))
    assert_usage_error(run_cli("submit", "caption"))


def test_bad_option_value_exits_2(run_cli: RunCli) -> None:
    assert_usage_error(run_cli("jobs", "--limit", "abc"), "--limit")


def test_unknown_command_exits_2(run_cli: RunCli) -> None:
    assert_usage_error(run_cli("stauts", "x"), "stauts")


@pytest.mark.parametrize("args", [(), ("submit",), ("run",), ("db",), ("schedule",)])
def test_bare_command_prints_its_help_and_exits_2(run_cli: RunCli, args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert_usage_error(result)
    assert "Commands" in result.stdout + result.stderr


def test_version(run_cli: RunCli) -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"llava-batch {version('llava-batch')}"


def test_help_exits_0_and_lists_every_command(run_cli: RunCli) -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("submit", "run", "status", "results", "jobs", "cancel", "retry", "worker"):
        assert command in result.stdout


# --- refusals that used to exit 1 --------------------------------------------------------------


def _queued_job(run_cli: RunCli, tmp_path: Path) -> str:
    write_images(tmp_path / "c", 1)
    result = run_cli("submit", "caption", str(tmp_path / "c"), "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["job_id"])


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_cancel_and_retry_of_an_unknown_job_exit_3(run_cli: RunCli, command: str) -> None:
    assert_one_line_error(run_cli(command, "0000dead"), 3, "job_not_found")
    full_id = "00000000-0000-4000-8000-000000000000"
    assert_one_line_error(run_cli(command, full_id), 3, "job_not_found")


def test_retry_of_a_cancelled_job_is_a_refusal_not_an_internal_error(
    run_cli: RunCli, tmp_path: Path
) -> None:
    job_id = _queued_job(run_cli, tmp_path)
    assert run_cli("cancel", job_id).returncode == 0
    assert_one_line_error(run_cli("retry", job_id), 2, "job_cancelled")


def test_unknown_schedule_exits_3(run_cli: RunCli) -> None:
    assert_one_line_error(run_cli("schedule", "pause", "nope"), 3, "schedule_not_found")


def test_results_to_an_unwritable_file_is_refused_with_2(run_cli: RunCli, tmp_path: Path) -> None:
    job_id = _queued_job(run_cli, tmp_path)
    result = run_cli("results", job_id, "-o", str(tmp_path / "no-such-dir" / "out.csv"))
    assert_one_line_error(result, 2, "invalid_output", "no-such-dir")


def test_worker_with_a_forking_pool_is_refused_with_2(run_cli: RunCli) -> None:
    assert_one_line_error(run_cli("worker", "--pool", "prefork"), 2, "invalid_option")


@pytest.mark.parametrize("args", [("--help",), ("jobs", "--json")])
def test_a_closed_output_pipe_ends_the_cli_quietly_as_a_filter(
    cli_env: dict[str, str], args: tuple[str, ...]
) -> None:
    """``llava-batch … | head``: typer and rich alone would exit 1, silently; an error line
    there is noise a filter does not make (``cat``, ``grep`` say nothing)."""
    result = run_into_a_closed_pipe(cli_env, *args)
    assert result.returncode == ExitCode.output_closed == 141
    assert result.stderr == ""


# --- every exit status in the one table, end to end --------------------------------------------


class Cli:
    """``run_cli`` plus what a scenario needs to start the CLI in the background."""

    def __init__(self, run: RunCli, env: dict[str, str]) -> None:
        self.run = run
        self.env = env

    def start(
        self, *args: str, argv: list[str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv or [CLI, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )


def _finish(process: subprocess.Popen[str]) -> Result:
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _ok(cli: Cli, tmp_path: Path) -> Result:
    return cli.run("jobs")


def _internal_error(cli: Cli, tmp_path: Path) -> Result:
    # A genuine bug, injected into the real entry point: the only way to exit 1.
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "import jobs.progress\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('an injected bug')\n"
        "jobs.progress.list_recent_jobs = broken\n"
        "(main,) = entry_points(group='console_scripts', name='llava-batch')\n"
        "sys.argv = ['llava-batch', 'jobs']\n"
        "main.load()()\n"
    )
    # From tmp_path: a stale ``*.egg-info`` in the repository root would shadow the entry point.
    return _finish(cli.start(argv=[sys.executable, "-c", code], cwd=tmp_path))


def _invalid_request(cli: Cli, tmp_path: Path) -> Result:
    return cli.run("submit", "caption", str(tmp_path / "missing.jpg"))


def _not_found(cli: Cli, tmp_path: Path) -> Result:
    return cli.run("status", "0000dead")


def _job_not_finished(cli: Cli, tmp_path: Path) -> Result:
    """``delete`` of a job still queued."""
    write_images(tmp_path / "q", 1)
    job_id = cli.run("submit", "caption", str(tmp_path / "q")).stdout.strip()
    return cli.run("delete", job_id)


def _schema_missing(cli: Cli, tmp_path: Path) -> Result:
    empty = tmp_path / "empty.sqlite3"
    create_engine(f"sqlite:///{empty}").connect().close()
    return cli.run("jobs", LLAVA_BATCH_DATABASE_URL=f"sqlite:///{empty}")


def _database_unavailable(cli: Cli, tmp_path: Path) -> Result:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nope"
    return cli.run("jobs", LLAVA_BATCH_DATABASE_URL=url)


def _job_not_completed(cli: Cli, tmp_path: Path) -> Result:
    """``submit --wait`` on a job that someone cancels meanwhile."""
    write_images(tmp_path / "c", 2)
    waiting = cli.start("submit", "caption", str(tmp_path / "c"), "--wait", "--json")
    database = create_engine(f"sqlite:///{tmp_path / 'home' / 'llava-batch.sqlite3'}")
    job_id = None
    deadline = time.monotonic() + 60
    while job_id is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with database.connect() as conn:
                job_id = conn.execute(text("select id from jobs")).scalar()
        except Exception:  # the file or its tables do not exist yet
            continue
    assert job_id is not None, "the job never appeared"
    assert cli.run("cancel", job_id).returncode == 0
    return _finish(waiting)


def _model_load_error(cli: Cli, tmp_path: Path) -> Result:
    model_dir = tmp_path / "pickled-llava"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return cli.run("worker", LLAVA_BATCH_MODEL=str(model_dir))


def _interrupted(cli: Cli, tmp_path: Path) -> Result:
    """Ctrl-C while ``status --watch`` waits on a job that never ends (no broker, no worker)."""
    job_id = _queued_job(cli.run, tmp_path)
    watching = cli.start("status", job_id, "--watch", "--json")
    database = str(tmp_path / "home" / "llava-batch.sqlite3")
    deadline = time.monotonic() + 60
    while not _has_open(watching.pid, database) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # inside the polling loop
    watching.send_signal(signal.SIGINT)
    return _finish(watching)


def _wait_timeout(cli: Cli, tmp_path: Path) -> Result:
    """``status --watch --timeout`` on a job that never ends (no broker, no worker)."""
    return cli.run("status", _queued_job(cli.run, tmp_path), "--watch", "--timeout", "1s")


def _output_closed(cli: Cli, tmp_path: Path) -> Result:
    """``llava-batch jobs | head -0``: the reader is gone before the first line."""
    return run_into_a_closed_pipe(cli.env, "jobs")


SCENARIOS: dict[ExitCode, tuple[Callable[[Cli, Path], Result], str]] = {
    ExitCode.ok: (_ok, ""),
    ExitCode.internal_error: (_internal_error, "internal_error"),
    ExitCode.invalid_request: (_invalid_request, "source_not_found"),
    ExitCode.not_found: (_not_found, "job_not_found"),
    ExitCode.schema_missing: (_schema_missing, "schema_missing"),
    ExitCode.database_unavailable: (_database_unavailable, "database_unavailable"),
    ExitCode.job_not_completed: (_job_not_completed, ""),
    ExitCode.model_load_error: (_model_load_error, "model_load_error"),
    ExitCode.job_not_finished: (_job_not_finished, "job_not_finished"),
    ExitCode.wait_timeout: (_wait_timeout, "wait_timeout"),
    ExitCode.interrupted: (_interrupted, "interrupted"),
    ExitCode.output_closed: (_output_closed, ""),  # silent: see the test above
}


def test_every_exit_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(ExitCode)


@pytest.mark.parametrize("exit_code", list(SCENARIOS), ids=lambda code: code.name)
def test_every_exit_code_is_reached_end_to_end(
    run_cli: RunCli, cli_env: dict[str, str], tmp_path: Path, exit_code: ExitCode
) -> None:
    scenario, error_code = SCENARIOS[exit_code]
    result = scenario(Cli(run_cli, cli_env), tmp_path)
    if error_code:
        assert_one_line_error(result, int(exit_code), f"[{error_code}]")
    else:
        assert result.returncode == exit_code, (result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
    if exit_code is not ExitCode.internal_error:
        assert "internal error" not in result.stderr


# --- helpers ------------------------------------------------------------------------------------


def _has_open(pid: int, path: str) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False
