"""A chaos run: random kill -9, SIGSTOP past the lease, Redis flushes, PostgreSQL cut off and
sweeper kills, with one job cancelled mid-way, and one job with a completion window too short
for it whose priority is lowered mid-way. Every job must end, the cancelled one
``cancelled``, the one with the window ``expired``; every item must end in exactly one terminal
state with at most one result.

Seeded and bounded: the same actions in the same order every run, about 30 s of chaos, then at
most two minutes for the system to settle. "PostgreSQL stops" is every connection of the workers
and the sweeper cut at a TCP proxy (the server itself is shared by the suite).
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from tests.integration.conftest import CLI, StartWorker, Worker, run_cli
from tests.integration.faults.conftest import (
    DbProxy,
    assert_invariant,
    images,
    job_status,
    read_rows,
    submit,
    wait_for,
    with_faults,
)

pytestmark = pytest.mark.slow

SEED = 20261130
CHAOS_SECONDS = 30


class Sweeper:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [CLI, "sweep"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill_and_restart(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.process = self._start()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_chaos_every_job_ends_and_the_cancelled_one_ends_cancelled(
    fault_env: dict[str, str],
    start_worker: StartWorker,
    db: Engine,
    redis_url: str,
    db_proxy: DbProxy,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    proxy = db_proxy.proxy
    env = with_faults(
        {
            **fault_env,
            "LLAVA_BATCH_DATABASE_URL": db_proxy.url,
            "LLAVA_BATCH_DB_IDLE_IN_TRANSACTION_SECONDS": "5",
        },
        generate_delay_s=1.5,
    )
    # The middle one is cancelled mid-way: large enough that two workers of two slots each are
    # still on it when the cancel lands.
    sizes = [20, 80, 20]
    jobs = [submit(fault_env, images(tmp_path, n, name=f"set{i}")) for i, n in enumerate(sizes)]
    # A job with the shortest window, and more items than the fleet does in it while it shares
    # the workers with the others: what has not started when it passes ends expired.
    windowed_size = 400
    windowed = run_cli(
        fault_env,
        "submit",
        "caption",
        images(tmp_path, windowed_size, name="windowed"),
        "--completion-window",
        "1m",
        "--json",
    )
    windowed_job = str(json.loads(windowed.stdout)["job_id"])
    workers: list[Worker] = [start_worker(env, "--no-sweep", ready=False) for _ in range(2)]
    for worker in workers:  # started together: their model loads overlap
        worker.wait_ready()
    sweeper = Sweeper(env, tmp_path / "sweeper.log")
    stopped: list[Worker] = []
    actions: list[str] = []
    cancelled = False
    try:
        end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.5, 3.0))
            if not cancelled and any(r.status == "running" for r in read_rows(db, jobs[1])):
                said = run_cli(fault_env, "cancel", jobs[1]).stderr
                # Cancelling while a batch runs; cancelled when that batch ended before the
                # cancel's last step (it finalises the job itself): the job is checked below.
                assert re.search(r": cancell(ing|ed)$", said.strip()), said
                cancelled = True
                # The case that stranded jobs: the cancelled job's running batch is lost.
                holders = {
                    (r.worker or "").rpartition(":")[2]
                    for r in read_rows(db, jobs[1])
                    if r.status == "running"
                }
                replacements: list[Worker] = []
                for victim in [w for w in workers if str(w.process.pid) in holders][:1]:
                    actions.append("kill_holder")
                    workers.remove(victim)
                    victim.signal(signal.SIGKILL)
                    victim.process.wait(10)
                    replacements.append(start_worker(env, "--no-sweep", ready=False))
                    workers.append(replacements[-1])
                actions.append("cancel")
                # The job with the window drops behind the others mid-run (the small ones
                # share the fleet with it, and are done by now). Not after the replacement's
                # start (seconds of imports and a model load): on a busy machine the window
                # had passed by then, and the job could no longer be re-prioritised.
                said = run_cli(fault_env, "priority", windowed_job, "-5").stderr
                assert "-> -5" in said, said
                actions.append("priority")
                for worker in replacements:
                    worker.wait_ready()
                continue
            action = rng.choice(["kill", "stop", "flush", "cut_db", "kill_sweeper"])
            actions.append(action)
            if action == "kill":
                victim = workers.pop(rng.randrange(len(workers)))
                victim.signal(signal.SIGKILL)
                victim.process.wait(10)
                workers.append(start_worker(env, "--no-sweep"))
            elif action == "stop":
                victim = rng.choice(workers)
                victim.signal(signal.SIGSTOP)  # past the 5 s lease, then back
                stopped.append(victim)
                time.sleep(6)
                victim.signal(signal.SIGCONT)
                stopped.remove(victim)
            elif action == "flush":
                redis.Redis.from_url(redis_url).flushall()
            elif action == "cut_db":
                proxy.cut()
                time.sleep(3)
                proxy.restore()
            else:
                sweeper.kill_and_restart()
        assert cancelled, f"the middle job never ran during the chaos: {actions}"
        for worker in workers:
            if worker.process.poll() is not None:
                workers.remove(worker)
        if not workers:
            workers.append(start_worker(env, "--no-sweep"))
        ended = ("completed", "failed", "cancelled", "expired")
        wait_for(
            lambda: all(job_status(db, j) in ended for j in [*jobs, windowed_job]),
            120,
            f"every job to end after {actions}",
            lambda: "\n".join(
                [f"{j}: {job_status(db, j)} {read_rows(db, j)}" for j in jobs]
                + [workers[-1].log(), sweeper.log_path.read_text(errors="replace")[-3000:]]
            ),
        )
    finally:
        for worker in stopped:
            worker.signal(signal.SIGCONT)
        sweeper.stop()
    assert job_status(db, jobs[1]) == "cancelled", actions
    for job_id, size in zip(jobs, sizes, strict=True):
        assert_invariant(read_rows(db, job_id), size)
    for job_id in (jobs[0], jobs[2]):
        assert job_status(db, job_id) == "completed", actions
    windowed_rows = read_rows(db, windowed_job)
    assert_invariant(windowed_rows, windowed_size)
    assert job_status(db, windowed_job) == "expired", actions
    assert any(r.status == "expired" for r in windowed_rows), actions
