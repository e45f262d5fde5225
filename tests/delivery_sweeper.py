"""A sweeper pass in its own process for the delivery kill tests: ``python -m
tests.delivery_sweeper MARKER N`` runs one ``run_maintenance`` pass (settings from the
environment), pausing for good at the N-th time a delivered file is whole but not yet under
its name (``delivery:output:file-written``), after writing MARKER, so the test can SIGKILL it
there. N = 0: no pause."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jobs.db import make_engine, make_session_factory
from jobs.hooks import pause_at
from jobs.maintenance import run_maintenance
from jobs.settings import Settings
from storage import open_blobs
from tests.helpers import ListPublisher


def main() -> None:
    marker, pause_at_call = Path(sys.argv[1]), int(sys.argv[2])
    settings = Settings.from_env()
    sf = make_session_factory(make_engine(settings.resolved_database_url))
    blobs = open_blobs(settings.resolved_storage_url)
    calls = 0

    def hook() -> None:
        nonlocal calls
        calls += 1
        if calls == pause_at_call:
            marker.write_text("paused")
            while True:  # until the test kills this process
                time.sleep(1)

    with pause_at("delivery:output:file-written", hook):
        report = run_maintenance(sf, blobs, ListPublisher(), settings)
    print(report.as_dict()["delivered"])


if __name__ == "__main__":
    main()
