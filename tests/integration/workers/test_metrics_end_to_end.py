"""What a real worker process exports, on SQLite and PostgreSQL: its model (name, revision,
quantization) and its failures by error code, scraped over HTTP on its fixed metrics port; and
the Celery events a monitor (Flower, ``celery events``) is sent: each message as it is sent
(task-sent, so what waits in a queue shows), and what workers do with it, without ``-E``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.helpers import free_ports, scrape_metrics, write_images
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli


@pytest.fixture(params=["postgresql", "sqlite"])
def fleet_env(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    env = dict(service_env, LLAVA_BATCH_BATCH_SIZE="2")
    if request.param == "sqlite":
        env["LLAVA_BATCH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
    return env


@pytest.fixture
def events(redis_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event on the broker, as a monitor receives them, while the test runs."""
    app = Celery(broker=redis_url)
    seen: list[dict[str, Any]] = []
    receivers: list[Any] = []

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": seen.append})
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield seen
    for receiver in receivers:
        receiver.should_stop = True  # its loop looks at it every second
    thread.join(timeout=5)


def test_a_worker_exports_its_model_and_failures_by_code_and_events_show_the_queue(
    fleet_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
    events: list[dict[str, Any]],
) -> None:
    images = write_images(tmp_path / "photos", 4)
    images[1].write_bytes(images[1].read_bytes()[:60])  # image_decode_error
    images[2].write_bytes(b"")  # empty_input (written failed at submit: not the worker's)
    port = free_ports(1)
    env = {
        **fleet_env,
        "LLAVA_BATCH_METRICS_PORT": str(port),
        "LLAVA_BATCH_METRICS_PORT_FIXED": "true",
    }
    cli(env, "db", "upgrade")
    worker = start_worker(env, "--no-sweep")  # no -E: events are the default
    assert f"metrics served on port {port} " in worker.log()
    _wait_for(lambda: any(e.get("type") == "worker-heartbeat" for e in events), worker.log)

    job_id = json.loads(cli(env, "submit", "caption", str(tmp_path / "photos"), "--json").stdout)[
        "job_id"
    ]
    done = cli(env, "status", job_id, "--watch", "--json", timeout=240)
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed", worker.log()

    scrape = scrape_metrics(port)
    (info,) = [dict(labels) for name, labels in scrape if name == "llava_batch_model_info"]
    assert info["model"] == "tiny-llava" and info["quantization"] == "none", info
    assert set(info) == {"model", "revision", "quantization"}
    failures = {
        dict(labels)["code"]: value
        for (name, labels), value in scrape.items()
        if name == "llava_batch_item_failures_total"
    }
    assert failures == {"image_decode_error": 1.0}  # the empty one never reached the worker

    # Flower's view: the doorbells submit sent (task-sent) and what the worker did with them.
    _wait_for(
        lambda: {"task-sent", "task-received", "task-succeeded"} <= _types(events), worker.log
    )
    sent = [e for e in events if e.get("type") == "task-sent"]
    assert {e.get("queue") for e in sent} == {"llava-batch.tiny-llava"}
    assert {e.get("name") for e in sent} == {"llava_batch.run_batch"}


def _types(events: list[dict[str, Any]]) -> set[object]:
    return {event.get("type") for event in list(events)}


def _wait_for(condition: Callable[[], bool], log: Callable[[], str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not seen in time\n{log()}")
