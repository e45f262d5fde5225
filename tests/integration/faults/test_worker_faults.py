"""Fault suite, worker side: kill -9, SIGTERM, SIGSTOP past the lease, a poison item.

Real worker processes (Celery, tiny model), real PostgreSQL, Redis and S3 (moto server). Each
scenario ends by checking the invariant on the rows.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from sqlalchemy.engine import Engine

from tests.integration.conftest import StartWorker, Worker
from tests.integration.faults.conftest import (
    assert_invariant,
    images,
    job_status,
    read_rows,
    submit,
    wait_for,
    whole_log,
    with_faults,
)


def _worker_name(worker: Worker) -> str:
    return f":{worker.process.pid}"


def _running_under(db: Engine, job_id: str, worker: Worker) -> list[str]:
    return [
        r.id
        for r in read_rows(db, job_id)
        if r.status == "running" and (r.worker or "").endswith(_worker_name(worker))
    ]


def test_kill_9_mid_batch_with_a_second_worker_loses_nothing(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(fault_env, generate_delay_s=2.0)
    a, b = start_worker(env, ready=False), start_worker(env, ready=False)  # loads overlap
    a.wait_ready()
    b.wait_ready()
    job_id = submit(env, images(tmp_path, 16))
    wait_for(lambda: bool(_running_under(db, job_id, a)), 60, "worker A to hold a batch")
    victims = _running_under(db, job_id, a)
    a.signal(signal.SIGKILL)
    wait_for(lambda: job_status(db, job_id) == "completed", 120, "the job to complete", b.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 16)
    assert all(r.status == "succeeded" for r in rows)
    for r in rows:
        if r.id in victims:
            assert r.attempts == 2 and r.worker.endswith(_worker_name(b)), r  # type: ignore[union-attr]


def test_kill_9_the_only_worker_then_a_new_one_does_not_rerun_finished_items(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(fault_env, generate_delay_s=1.0)
    job_id = submit(env, images(tmp_path, 12))
    first = start_worker(env)
    wait_for(
        lambda: sum(r.status == "succeeded" for r in read_rows(db, job_id)) >= 4,
        60,
        "a first batch to finish",
        first.log,
    )
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    done_before = {r.id: r for r in read_rows(db, job_id) if r.status == "succeeded"}
    second = start_worker(env)
    wait_for(lambda: job_status(db, job_id) == "completed", 120, "the job to complete", second.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 12)
    for r in rows:
        if r.id in done_before:
            assert r == done_before[r.id]  # same worker, same result, same finish time
        else:
            assert r.worker.endswith(_worker_name(second)) or r.attempts == 1, r  # type: ignore[union-attr]
    assert all(r.status == "succeeded" for r in rows)


def test_an_item_that_kills_its_worker_every_time_ends_worker_lost(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(
        {**fault_env, "LLAVA_BATCH_MAX_ATTEMPTS": "2", "LLAVA_BATCH_BATCH_SIZE": "5"},
        kill_on_prompt="POISON",
    )
    directory = Path(images(tmp_path, 5))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"input": str(p), "prompt": "POISON pill" if i == 2 else "Describe it."})
            + "\n"
            for i, p in enumerate(sorted(directory.iterdir()))
        )
    )
    job_id = submit(env, str(manifest))
    workers = [start_worker(env)]

    def supervise() -> bool:  # what systemd/Kubernetes would do: restart a dead worker
        if workers[-1].process.poll() is not None:
            workers.append(start_worker(env))
        return job_status(db, job_id) in ("completed", "failed")

    wait_for(supervise, 180, "the job to end", lambda: workers[-1].log())
    rows = read_rows(db, job_id)
    assert_invariant(rows, 5)
    assert [r.status for r in rows] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
    ]
    assert rows[2].error_code == "worker_lost" and rows[2].attempts == 2
    assert len(workers) >= 3  # two deaths, then a worker that finished the job


def test_sigterm_mid_batch_finishes_the_batch_and_loses_nothing(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(fault_env, generate_delay_s=2.0)
    job_id = submit(env, images(tmp_path, 8))
    first = start_worker(env)
    wait_for(lambda: bool(_running_under(db, job_id, first)), 60, "a batch to start")
    in_flight = _running_under(db, job_id, first)
    first.signal(signal.SIGTERM)
    assert first.process.wait(60) == 0  # warm shutdown: the current batch is finished first
    finished = {r.id: r for r in read_rows(db, job_id)}
    assert all(finished[i].status == "succeeded" for i in in_flight)
    second = start_worker(env)
    wait_for(lambda: job_status(db, job_id) == "completed", 120, "the job to complete", second.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 8)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in rows)


def test_a_paused_worker_cannot_overwrite_the_work_of_the_one_that_took_over(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(fault_env, generate_delay_s=1.0)
    job_id = submit(env, images(tmp_path, 1))
    paused = start_worker(env, "--no-sweep")
    wait_for(lambda: bool(_running_under(db, job_id, paused)), 60, "the item to be claimed")
    paused.signal(signal.SIGSTOP)
    try:
        other = start_worker(env)  # its sweeper takes the expired lease back
        wait_for(lambda: job_status(db, job_id) == "completed", 60, "the takeover", other.log)
        (row,) = read_rows(db, job_id)
        assert row.worker.endswith(_worker_name(other)) and row.attempts == 2  # type: ignore[union-attr]
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(
        lambda: "lease lost" in whole_log(paused), 30, "the late write to be refused", paused.log
    )
    assert read_rows(db, job_id) == [row]


def test_a_batch_longer_than_its_lease_keeps_it_while_the_worker_is_alive(
    fault_env: dict[str, str], start_worker: StartWorker, db: Engine, tmp_path: Path
) -> None:
    env = with_faults(fault_env, generate_delay_s=9.0)  # lease is 5 s, sweeps every second
    worker = start_worker(env)
    job_id = submit(env, images(tmp_path, 2))
    wait_for(lambda: job_status(db, job_id) == "completed", 60, "the job", worker.log)
    rows = read_rows(db, job_id)
    assert_invariant(rows, 2)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in rows)
    log = whole_log(worker)
    assert "lease lost" not in log and "lease expired" not in log
