from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "llava-batch")


def run_cli(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Runs ``llava-batch`` as a user would; with ``check``, it must succeed."""
    result = subprocess.run(
        [CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


class Worker:
    """A real ``llava-batch worker`` process (Celery, solo pool, the tiny model)."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [CLI, "worker", "--loglevel", "INFO", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker ready" in self.log_path.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """Ends the process at once (SIGKILL): for a test that is over, where a warm shutdown
        (finishing the batch in flight, closing the broker connection) cost seconds for
        nothing. The tests of shutdown send their own signals."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    started: list[Worker] = []

    def start(env: dict[str, str], *args: str, ready: bool = True) -> Worker:
        """Starts a worker; with ``ready``, waits until it serves. To start several at once
        (each start is seconds of imports and a model load), pass ``ready=False`` and call
        ``wait_ready`` on each."""
        worker = Worker(env, tmp_path / f"worker{len(started)}.log", *args)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def service_env(
    tmp_path: Path, pg_url: str, redis_url: str, moto_server: str, s3_bucket: str
) -> dict[str, str]:
    """Environment for CLI and worker processes: PostgreSQL, Redis, S3 (moto server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
    env.update(
        LLAVA_BATCH_HOME=str(tmp_path / "home"),
        LLAVA_BATCH_DATABASE_URL=pg_url,
        LLAVA_BATCH_BROKER_URL=redis_url,
        LLAVA_BATCH_STORAGE_URL=f"s3://{s3_bucket}/llava-inputs",
        LLAVA_BATCH_MODEL="tiny-llava",
        LLAVA_BATCH_MAX_NEW_TOKENS="8",
        LLAVA_BATCH_BATCH_SIZE="4",
    )
    return env
