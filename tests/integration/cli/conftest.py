from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import migrated_session_factory
from tests.services import free_port

CLI = str(Path(sys.executable).parent / "llava-batch")

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
    env["LLAVA_BATCH_HOME"] = str(tmp_path / "home")
    # A broker nobody listens on unless a test sets a real one.
    env["LLAVA_BATCH_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    # run and sweep serve no metrics unless a test asks (tests/integration/cli/test_cli_metrics.py):
    # many at once on one host would take the ports from 9464 up, and warn once they are gone.
    env["LLAVA_BATCH_METRICS_PORT"] = "0"
    return env


# Every CLI test that reads a database runs on both kinds.
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def db_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The CLI's database, migrated (a SQLite file, or PostgreSQL), and its blob store: what a
    test that also opens them here (``migrated_session_factory``, ``open_blobs``) names."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        migrated_session_factory(url)  # what `llava-batch db upgrade` does
    else:
        url = request.getfixturevalue("migrated_pg_url")
    return {"LLAVA_BATCH_DATABASE_URL": url, "LLAVA_BATCH_STORAGE_URL": str(tmp_path / "blobs")}


@pytest.fixture(params=DATABASES)
def default_db_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """SQLite as a user gets it, the embedded default under LLAVA_BATCH_HOME (no URL set), or
    a migrated PostgreSQL; the blob store is the default one."""
    if request.param == "sqlite":
        return {}
    return {"LLAVA_BATCH_DATABASE_URL": request.getfixturevalue("migrated_pg_url")}


@pytest.fixture(params=DATABASES)
def unmigrated_db_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """As ``default_db_env``, but PostgreSQL empty: for a test that runs ``db upgrade`` first."""
    if request.param == "sqlite":
        return {}
    return {"LLAVA_BATCH_DATABASE_URL": request.getfixturevalue("pg_url")}


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> RunCli:
    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        merged = {**cli_env, **(env or {}), **extra_env}
        return subprocess.run(
            [CLI, *args],
            capture_output=True,
            text=True,
            env=merged,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def run_into_a_closed_pipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``llava-batch ARGS | head -0``: the reader of stdout is gone before the first write."""
    process = subprocess.Popen(
        [CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    process.stdout.close()
    stderr = process.communicate(timeout=120)[1]
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
