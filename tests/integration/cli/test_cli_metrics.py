"""Prometheus metrics of ``llava-batch run`` and ``llava-batch sweep``: real processes scraped
over HTTP while they run, on SQLite and PostgreSQL; and a fixed metrics port that is taken.

A worker's own metrics are scraped in tests/integration/workers/test_metrics_end_to_end.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.db import Item, make_engine
from tests.helpers import free_ports, scrape_metrics, write_images
from tests.integration.cli.conftest import CLI, RunCli, assert_one_line_error

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _metrics_env(env: dict[str, str]) -> tuple[dict[str, str], int]:
    port = free_ports(1)
    fixed = {"LLAVA_BATCH_METRICS_PORT": str(port), "LLAVA_BATCH_METRICS_PORT_FIXED": "true"}
    return {**env, **fixed}, port


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        log = (tmp_path / f"process{len(processes)}.log").open("w")
        process = subprocess.Popen(
            [CLI, *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _scrape_until(
    process: subprocess.Popen[str], port: int, done: Callable[[Scrape], bool], log: Path
) -> Scrape:
    """Scrapes the live process until ``done`` holds of what it serves."""
    deadline = time.monotonic() + 120
    scrape: Scrape = {}
    while time.monotonic() < deadline:
        assert process.poll() is None, f"it ended first:\n{log.read_text()[-3000:]}"
        try:
            scrape = scrape_metrics(port)
        except OSError:  # not serving yet
            scrape = {}
        if scrape and done(scrape):
            return scrape
        time.sleep(0.2)
    raise AssertionError(f"not seen in time: {sorted(scrape)[:40]}\n{log.read_text()[-3000:]}")


def _revision(env: dict[str, str]) -> str:
    """The model revision the job's items recorded (one for all of them)."""
    url = env.get("LLAVA_BATCH_DATABASE_URL") or (
        f"sqlite:///{Path(env['LLAVA_BATCH_HOME']) / 'llava-batch.sqlite3'}"
    )
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(Item.model_revision).where(Item.status == "succeeded").distinct()
            (revision,) = connection.scalars(query).all()
    finally:
        engine.dispose()
    return revision or ""


def _sample(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def test_run_serves_its_model_items_and_failures_by_code(
    cli_env: dict[str, str],
    unmigrated_db_env: dict[str, str],
    run_cli: RunCli,
    started: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "photos"
    images = write_images(folder, 5)
    images[0].write_bytes(images[0].read_bytes()[:60])  # the first item: image_decode_error
    env, port = _metrics_env({**cli_env, **unmigrated_db_env})
    # Slow batches of one item: the run is still going when its first ones are recorded.
    env["LLAVA_BATCH_TEST_FAULTS"] = json.dumps({"generate_delay_s": 1.5})
    assert run_cli("db", "upgrade", env=env).returncode == 0

    run = started(env, "run", "caption", str(folder), "--batch-size", "1")
    seen = _scrape_until(
        run,
        port,
        lambda s: (
            _sample(s, "llava_batch_items_total", kind="caption", status="succeeded") >= 1
            and _sample(s, "llava_batch_item_failures_total", code="image_decode_error") == 1
        ),
        tmp_path / "process0.log",
    )

    (info,) = [dict(labels) for name, labels in seen if name == "llava_batch_model_info"]
    # What its items record, as the worker that produced them (docs/deployment.md).
    assert info == {"model": "tiny-llava", "quantization": "none", "revision": _revision(env)}
    assert _sample(seen, "llava_batch_items_total", kind="caption", status="failed") == 1
    assert _sample(seen, "llava_batch_model_load_seconds") > 0
    # `run` is a laptop's command: its metrics are for this machine only.
    outward = _outward_address()
    if outward is not None:
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=2).close()
    run.wait(timeout=120)
    assert run.returncode == 0  # completed, with one item failed
    log = (tmp_path / "process0.log").read_text()
    assert f"metrics served on port {port} (/metrics)" in log


def test_sweep_serves_the_backlog_it_reads_from_the_database(
    cli_env: dict[str, str],
    unmigrated_db_env: dict[str, str],
    run_cli: RunCli,
    started: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    env, port = _metrics_env({**cli_env, **unmigrated_db_env})
    env["LLAVA_BATCH_SWEEP_INTERVAL_SECONDS"] = "1"
    assert run_cli("db", "upgrade", env=env).returncode == 0
    write_images(tmp_path / "urgent", 3)
    write_images(tmp_path / "later", 2, prefix="later")
    # No worker and no broker: the items wait, queued (the sweeper cannot ring for them).
    for folder, priority in (("urgent", "2"), ("later", "0")):
        submitted = run_cli(
            "submit", "caption", str(tmp_path / folder), "--priority", priority, env=env
        )
        assert submitted.returncode == 0, submitted.stderr

    sweep = started(env, "sweep")
    seen = _scrape_until(
        sweep,
        port,
        lambda s: _sample(s, "llava_batch_backlog_items", model="tiny-llava", priority="2") == 3,
        tmp_path / "process0.log",
    )

    assert _sample(seen, "llava_batch_backlog_items", model="tiny-llava", priority="0") == 2
    log = (tmp_path / "process0.log").read_text()
    assert f"metrics served on port {port} (/metrics)" in log


@pytest.mark.parametrize("command", [["sweep"], ["worker", "--pool", "solo"]])
def test_a_fixed_metrics_port_that_is_taken_stops_the_process_with_one_line(
    run_cli: RunCli, command: list[str]
) -> None:
    assert run_cli("db", "upgrade").returncode == 0
    port = free_ports(2)
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        result = run_cli(
            *command,
            LLAVA_BATCH_METRICS_PORT=str(port),
            LLAVA_BATCH_METRICS_PORT_FIXED="true",
        )
    assert_one_line_error(result, 2, "metrics_port_taken", str(port))
    assert "loading model" not in result.stderr  # refused before the model loads


def _outward_address() -> str | None:
    """This machine's address on its way out (no packet is sent), when it has one besides
    loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address
