"""Shared pieces of the fault suite: short leases, a fast sweeper, row checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from jobs.db import Item, Job
from tests.integration.conftest import Worker
from tests.integration.conftest import run_cli as cli
from tests.integration.faults.proxy import CuttableProxy

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) the fault scenarios run one at a time, on one
    process, while the rest of the suite shares the other: each times leases, sweeps and kills
    in seconds, and two at once would compete for the CPU that those timings assume."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("faults"))


@pytest.fixture
def pg_url(migrated_pg_url: str) -> str:
    """Each fault scenario's database, already at the newest revision and empty (see
    ``MigratedDatabases``), where a ``llava-batch db upgrade`` process per scenario cost seconds
    (the command itself is covered by tests/integration/workers and tests/integration/cli)."""
    return migrated_pg_url


@pytest.fixture
def fault_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "LLAVA_BATCH_LEASE_SECONDS": "5",
        "LLAVA_BATCH_SWEEP_INTERVAL_SECONDS": "1",
        "LLAVA_BATCH_REDISPATCH_AFTER_SECONDS": "2",
        "LLAVA_BATCH_MAX_NEW_TOKENS": "4",
    }


@dataclass(frozen=True)
class DbProxy:
    """PostgreSQL behind a proxy the test can cut: ``url`` goes through it."""

    proxy: CuttableProxy
    url: str


@pytest.fixture
def db_proxy(fault_env: dict[str, str]) -> Iterator[DbProxy]:
    url = urlsplit(fault_env["LLAVA_BATCH_DATABASE_URL"])
    proxy = CuttableProxy(url.hostname or "127.0.0.1", url.port or 5432)
    try:
        yield DbProxy(proxy, url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl())
    finally:
        proxy.close()


def with_faults(env: dict[str, str], **faults: object) -> dict[str, str]:
    return {**env, "LLAVA_BATCH_TEST_FAULTS": json.dumps(faults)}


def submit(env: dict[str, str], *sources: str) -> str:
    out = cli(env, "submit", "caption", *sources, "--json").stdout
    return str(json.loads(out)["job_id"])


@dataclass(frozen=True)
class Row:
    id: str
    status: str
    attempts: int
    worker: str | None
    result_text: str | None
    error_code: str | None
    lease_token: str | None
    finished_at: object


@pytest.fixture
def db(fault_env: dict[str, str]) -> Iterator[Engine]:
    engine = create_engine(fault_env["LLAVA_BATCH_DATABASE_URL"])
    yield engine
    engine.dispose()


def read_rows(db: Engine, job_id: str) -> list[Row]:
    with db.connect() as conn:
        rows = conn.execute(
            select(
                Item.id,
                Item.status,
                Item.attempts,
                Item.worker,
                Item.result_text,
                Item.error_code,
                Item.lease_token,
                Item.finished_at,
            )
            .where(Item.job_id == job_id)
            .order_by(Item.seq)
        ).all()
    return [Row(*row) for row in rows]


def job_status(db: Engine, job_id: str) -> str:
    with db.connect() as conn:
        return str(conn.execute(select(Job.status).where(Job.id == job_id)).scalar_one())


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    on_fail: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_fail()}")


def assert_invariant(rows: list[Row], total: int) -> None:
    """Every accepted item ends in exactly one terminal state with at most one result."""
    assert len(rows) == total
    assert len({r.id for r in rows}) == total
    for r in rows:
        assert r.status in ("succeeded", "failed", "cancelled", "expired"), r
        assert r.lease_token is None, r
        if r.status == "succeeded":
            assert r.result_text is not None and r.error_code is None, r
        if r.status == "failed":
            assert r.error_code and r.result_text is None, r
        if r.status == "expired":
            assert r.error_code == "batch_expired" and r.result_text is None, r


def whole_log(worker: Worker) -> str:
    """All a worker wrote. ``Worker.log`` is the tail, for failure messages; a check for a line
    reads the whole log, since doorbells that find no work (a queue is topped up to its
    ``bell_limit``) write lines enough to push an earlier one out of the tail."""
    return worker.log_path.read_text(errors="replace")


def images(tmp_path: Path, count: int, name: str = "imgs") -> str:
    from tests.helpers import write_images

    write_images(tmp_path / name, count)
    return str(tmp_path / name)
