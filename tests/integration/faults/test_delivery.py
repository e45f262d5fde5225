"""Delivery end to end, real processes: no batch dropped without a sweeper, and a cancel that
meets a dead worker still ends ``cancelled``."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from tests.integration.conftest import CLI, StartWorker, run_cli
from tests.integration.faults.conftest import (
    DbProxy,
    assert_invariant,
    images,
    job_status,
    read_rows,
    submit,
    wait_for,
    whole_log,
    with_faults,
)


def test_jobs_back_to_back_complete_promptly_with_no_sweeper_running(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    """Invariant I3 (docs/design.md#I3): every message's items are claimed when it arrives.
    Before, a claim that met
    the producer's "mark dispatched" UPDATE skipped the locked rows and acked the message; with
    no sweeper, such a job never finished. Now a message is a doorbell that claims the next
    whole batch of work, and one that claims rings again: with no sweeper, every batch is
    claimed once and whole, and every job finishes."""
    env = {**fault_env, "LLAVA_BATCH_REDISPATCH_AFTER_SECONDS": "3600"}
    worker = start_worker(env, "--no-sweep")
    folder = images(tmp_path, 8)
    jobs = [submit(env, folder) for _ in range(6)]
    deadline = time.monotonic() + 90
    for job_id in jobs:
        wait_for(
            lambda job_id=job_id: job_status(db, job_id) == "completed",
            max(1.0, deadline - time.monotonic()),
            f"job {job_id} to complete without a sweeper",
            worker.log,
        )
        rows = read_rows(db, job_id)
        assert_invariant(rows, 8)
        assert all(r.status == "succeeded" and r.attempts == 1 for r in rows)
    # Six jobs of 8 at LLAVA_BATCH_BATCH_SIZE=4: twelve claims of 4. A claim that skipped rows
    # someone held would show as a short batch (and one more claim); a doorbell that found
    # nothing (claimed 0) is one rung beyond the work, which is not replaced.
    batch_size = int(env["LLAVA_BATCH_BATCH_SIZE"])
    wait_for(
        lambda: sum(1 for n in _claims(whole_log(worker)) if n) >= 12,
        30,
        "twelve claims in the worker's log",
        worker.log,
    )
    claims = _claims(whole_log(worker))
    assert set(claims) <= {0, batch_size} and len(claims) - claims.count(0) == 12, claims
    # Doorbells die out: each claim rang one more, so those that found nothing are at most the
    # ones the submits rang (a batch each).
    assert claims.count(0) <= len(jobs) * 8 // batch_size, worker.log()


def _claims(log: str) -> list[int]:
    """How many items each message the worker ran claimed, from Celery's task lines."""
    return [
        int(n) for n in re.findall(r"run_batch\[[^\]]*\] succeeded in \S+: \{'claimed': (\d+)", log)
    ]


def test_cancel_then_kill_9_then_a_new_worker_ends_cancelled(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    """Invariant I5 (docs/design.md#I5): items taken back from a dead worker of a cancelling
    job end cancelled, and
    the job finalises (before: ``cancelling`` forever with items ``queued``)."""
    env = with_faults(fault_env, generate_delay_s=3.0)
    job_id = submit(env, images(tmp_path, 12))
    first = start_worker(env)
    wait_for(
        lambda: any(r.status == "running" for r in read_rows(db, job_id)),
        60,
        "a batch to run",
        first.log,
    )
    run_cli(env, "cancel", job_id)
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    second = start_worker(env)
    wait_for(lambda: job_status(db, job_id) == "cancelled", 60, "the job to end", second.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 12)
    assert all(r.status in ("cancelled", "succeeded") for r in rows)
    assert any(r.status == "cancelled" for r in rows)
    done = run_cli(env, "status", job_id, "--json", check=False)
    assert done.returncode == 0 and '"cancelled"' in done.stdout


def test_standalone_sweeper_rides_out_a_database_outage(
    fault_env: dict[str, str], db: Engine, db_proxy: DbProxy, tmp_path: Path
) -> None:
    """The repairer of last resort must outlive what it repairs: before, ``llava-batch sweep``
    exited 5 the moment PostgreSQL was unreachable."""
    proxy = db_proxy.proxy
    env = {**fault_env, "LLAVA_BATCH_DATABASE_URL": db_proxy.url}
    log_path = tmp_path / "sweep.log"
    with log_path.open("wb") as log:
        sweeper = subprocess.Popen(
            [CLI, "sweep"], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        passes = lambda: log_path.read_text(errors="replace").count("sweep pass: ")  # noqa: E731
        wait_for(lambda: passes() >= 1, 30, "a first pass", log_path.read_text)
        proxy.cut()
        wait_for(
            lambda: "database is unreachable" in log_path.read_text(errors="replace"),
            30,
            "the outage to be noticed",
            log_path.read_text,
        )
        time.sleep(3)
        assert sweeper.poll() is None, log_path.read_text()
        before = passes()
        proxy.restore()
        job_id = submit(fault_env, images(tmp_path, 2))  # work for it once it is back
        wait_for(lambda: passes() > before, 60, "a pass after the outage", log_path.read_text)
        assert sweeper.poll() is None
        assert job_status(db, job_id) in ("queued", "in_progress")
    finally:
        sweeper.terminate()
        sweeper.wait(10)


def test_standalone_sweeper_started_while_the_database_is_down_waits_for_it(
    fault_env: dict[str, str], db: Engine, db_proxy: DbProxy, tmp_path: Path
) -> None:
    """Invariant I1 (docs/design.md#I1) needs a sweeper, so the sweeper must outlive what it
    repairs from its first second: started while PostgreSQL is unreachable (a container that
    comes up before its database), ``llava-batch sweep`` waits with backoff, saying so, and
    sweeps once the database answers. It used to exit 5 at once. ``--once`` still fails fast:
    a single pass from cron should report the outage, not hang."""
    proxy = db_proxy.proxy
    env = {**fault_env, "LLAVA_BATCH_DATABASE_URL": db_proxy.url}
    proxy.cut()
    once = run_cli(env, "sweep", "--once", check=False, timeout=60)
    assert once.returncode == 5, once.stderr

    heartbeat, log_path = tmp_path / "sweeper-heartbeat", tmp_path / "sweep.log"
    with log_path.open("wb") as log:
        sweeper = subprocess.Popen(
            [CLI, "sweep", "--heartbeat-file", str(heartbeat)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(
            lambda: "database is unreachable" in log_path.read_text(errors="replace"),
            30,
            "the outage to be noticed",
            log_path.read_text,
        )
        time.sleep(3)
        assert sweeper.poll() is None, log_path.read_text()
        assert not heartbeat.exists()
        proxy.restore()
        wait_for(heartbeat.exists, 60, "a pass once the database answers", log_path.read_text)
        assert sweeper.poll() is None
        assert "sweep pass: " in log_path.read_text(errors="replace")
    finally:
        sweeper.terminate()
        sweeper.wait(10)
