"""Sharing the fleet with real processes: a small job submitted while a big one runs is served
in turn, not after the big one's every batch (invariant I13, docs/design.md#I13), on PostgreSQL
and SQLite with a real Celery worker, and with the one-process ``run`` beside another; and the
broker's queue holds doorbells, not the backlog (invariant I14).

Times are the database's own (``finished_at - created_at`` of each job), not a timer around a
subprocess. The figures at scale (a 3,000-item job, two workers) are ``bench/fair_share.py``'s.
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from jobs.db import Item, Job
from tests.helpers import write_images
from tests.integration.conftest import CLI, StartWorker
from tests.integration.conftest import run_cli as cli

BIG, SMALL = 480, 8
# Six batches of 4: enough for fair share alone to put big batches between them.
URGENT = 24
BELLS = 6


def _wait(url: str, job_id: str, *, until: str = "finished", timeout: float = 300) -> Job:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                job = conn.execute(select(Job).where(Job.id == job_id)).one_or_none()
            if job is not None and (
                job.finished_at is not None
                if until == "finished"
                else job.status != "queued" and job.started_at is not None
            ):
                return job  # type: ignore[return-value]
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError(f"job {job_id} not {until} after {timeout}s")


def _took(job: Job) -> timedelta:
    assert job.finished_at is not None
    return job.finished_at - job.created_at


def _queued(url: str, job_id: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(Item)
                    .where(Item.job_id == job_id, Item.status == "queued")
                )
                or 0
            )
    finally:
        engine.dispose()


def _submit(env: dict[str, str], folder: Path, *extra: str) -> str:
    return cli(env, "submit", "caption", str(folder), *extra).stdout.strip()


@pytest.fixture(params=["postgresql", "sqlite"])
def fleet_env(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    env = dict(service_env, LLAVA_BATCH_DOORBELLS=str(BELLS))
    if request.param == "sqlite":
        env["LLAVA_BATCH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
    return env


def test_a_small_job_behind_a_big_one_is_served_in_turn(
    fleet_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, redis_url: str
) -> None:
    url = fleet_env["LLAVA_BATCH_DATABASE_URL"]
    cli(fleet_env, "db", "upgrade")
    write_images(tmp_path / "small", SMALL, prefix="s")
    write_images(tmp_path / "big", BIG, prefix="b")
    worker = start_worker(fleet_env, "--no-sweep")

    alone = _took(_wait(url, _submit(fleet_env, tmp_path / "small")))
    big = _submit(fleet_env, tmp_path / "big")
    _wait(url, big, until="started")
    queue = f"{fleet_env.get('LLAVA_BATCH_QUEUE', 'llava-batch')}.tiny-llava"
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue) <= BELLS  # 120 batches wait; the queue holds doorbells
    small = _submit(fleet_env, tmp_path / "small", "--idempotency-key", "second")
    behind = _wait(url, small)
    left = _queued(url, big)
    client.close()

    # Served in turn: the big job still had most of its items when the small one ended (first
    # in, first out, the small job waited for all of them).
    assert left >= BIG // 2, (left, worker.log())
    assert _took(behind) <= max(4 * alone, alone + timedelta(seconds=15)), (alone, behind)
    cli(fleet_env, "cancel", big)


def test_a_higher_priority_job_overtakes_a_running_one(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    """Invariant I13 with a real worker: once the urgent job's first batch is claimed, every
    claim takes it until it has nothing left to claim; of the running job, at most the one batch
    the other slot claimed in the same instant starts meanwhile. (Fair share alone would take
    the two jobs in turn: about one big batch between every two urgent ones.)"""
    url = service_env["LLAVA_BATCH_DATABASE_URL"]
    cli(service_env, "db", "upgrade")
    write_images(tmp_path / "big", BIG, prefix="b")
    write_images(tmp_path / "urgent", URGENT, prefix="u")
    start_worker(service_env, "--no-sweep")
    big = _submit(service_env, tmp_path / "big")
    _wait(url, big, until="started")
    urgent = _wait(url, _submit(service_env, tmp_path / "urgent", "--priority", "5"))
    engine = create_engine(url)
    with engine.connect() as conn:
        first_urgent, last_urgent = conn.execute(
            select(func.min(Item.started_at), func.max(Item.started_at)).where(
                Item.job_id == urgent.id
            )
        ).one()
        # Measured from the urgent job's first claim, not its submit: big batches claimed while
        # its submit's transaction was still open could not see it, and a loaded machine makes
        # that window longer.
        overtaken = conn.scalar(
            select(func.count())
            .select_from(Item)
            .where(
                Item.job_id == big,
                Item.started_at > first_urgent,
                Item.started_at < last_urgent,
            )
        )
    engine.dispose()
    assert overtaken is not None and overtaken <= 4, overtaken
    assert _queued(url, big) > 0  # the urgent job did not merely come after the big one
    cli(service_env, "cancel", big)


def test_a_small_run_beside_a_big_run_is_not_behind_it(tmp_path: Path) -> None:
    """The embedded runner: each ``run`` claims its own job's batches only, so a small ``run``
    beside a big one on the same SQLite database ends first."""
    home = tmp_path / "home"
    env = {"LLAVA_BATCH_HOME": str(home), "LLAVA_BATCH_MAX_NEW_TOKENS": "8", "PATH": "/usr/bin"}
    write_images(tmp_path / "small", SMALL, prefix="s")
    write_images(tmp_path / "big", BIG, prefix="b")
    url = f"sqlite:///{home / 'llava-batch.sqlite3'}"
    big = subprocess.Popen(  # long answers: it runs long enough to be beside the small one
        [CLI, "run", "caption", str(tmp_path / "big"), "--max-new-tokens", "128"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _started(url):
            assert big.poll() is None, "the big run ended before it started"
            time.sleep(0.2)
        cli(env, "run", "caption", str(tmp_path / "small"), timeout=300)
        engine = create_engine(url)
        with engine.connect() as conn:
            first, second = conn.execute(select(Job.status).order_by(Job.created_at)).all()
        engine.dispose()
        assert second.status == "completed"
        assert first.status in ("queued", "in_progress"), first
    finally:
        big.terminate()
        big.wait(60)


def _started(url: str) -> bool:
    """Whether the one job there has started (its run has loaded its model)."""
    if not Path(url.removeprefix("sqlite:///")).exists():
        return False
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(select(Job.id).where(Job.started_at.is_not(None))).first() is not None
            )
    except Exception:  # the run is still creating its tables
        return False
    finally:
        engine.dispose()
