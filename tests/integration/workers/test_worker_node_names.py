"""Several workers on one host: each answers ``celery inspect ping`` under its own node name
(Celery's default, ``celery@<host>``, would make two of them one node), and ``-E`` turns task
events on for Flower."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import StartWorker

CELERY = str(Path(sys.executable).parent / "celery")


def ping(env: dict[str, str]) -> set[str]:
    """``celery -A workers.celery_app inspect ping``, as an operator would run it."""
    result = subprocess.run(
        [CELERY, "-A", "workers.celery_app", "inspect", "ping", "--json", "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    replies = json.loads(result.stdout)
    assert all(reply == {"ok": "pong"} for reply in replies.values()), replies
    return set(replies)


def test_two_workers_on_one_host_answer_ping_under_distinct_names(
    service_env: dict[str, str], start_worker: StartWorker
) -> None:
    from tests.integration.conftest import run_cli

    run_cli(service_env, "db", "upgrade")
    host = socket.gethostname()
    # Both start together (their model loads overlap); both serve before the ping.
    default = start_worker(service_env, "--no-sweep", ready=False)
    named = start_worker(service_env, "--no-sweep", "-n", "gpu1@%h", "--no-events", ready=False)
    default.wait_ready()
    named.wait_ready()

    nodes = ping(service_env)

    assert len(nodes) == 2, nodes
    assert f"gpu1@{host}" in nodes
    (other,) = nodes - {f"gpu1@{host}"}
    assert other == f"llava-batch-{default.process.pid}@{host}", other
    assert "DuplicateNodenameWarning" not in default.log() + named.log()
    banner = re.compile(r"task events:\s*ON", re.IGNORECASE)
    assert banner.search(default.log()), default.log()  # events are the default (for Flower)
    assert not banner.search(named.log()), named.log()
