"""``sweep --heartbeat-file``: what the compose sweeper's healthcheck reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.integration.cli.conftest import RunCli


def test_sweep_touches_its_heartbeat_file_after_a_pass(run_cli: RunCli, tmp_path: Path) -> None:
    heartbeat = tmp_path / "sweeper-heartbeat"
    assert run_cli("db", "upgrade").returncode == 0
    before = time.time()

    result = run_cli("sweep", "--once", "--heartbeat-file", str(heartbeat))

    assert result.returncode == 0, result.stderr
    assert heartbeat.is_file()
    assert os.path.getmtime(heartbeat) >= before - 1
