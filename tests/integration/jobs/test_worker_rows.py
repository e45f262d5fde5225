"""The workers registry forgets dead workers, on SQLite and PostgreSQL: the sweeper's pass deletes
rows not beaten for LLAVA_BATCH_WORKER_ROWS_KEPT_FOR, a bounded number per call, and live
workers (and what submit and status read of them) are untouched."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from jobs.db import SessionFactory, WorkerRow, utcnow
from jobs.fleet import Serving, beat_worker, forget_dead_workers, live_workers
from jobs.sweeper import sweep
from tests.helpers import ListPublisher, make_settings

LLAVA = Serving("tiny-llava", None, "none")
WEEK = timedelta(days=7)


def _nodes(sf: SessionFactory) -> list[str]:
    with sf() as session:
        return sorted(session.scalars(select(WorkerRow.node)))


def test_rows_not_seen_for_longer_than_kept_go_a_bounded_number_at_a_time(
    session_factory: SessionFactory,
) -> None:
    now = utcnow()
    for i in range(5):  # dead for eight to twelve days
        beat_worker(session_factory, f"dead{i}@host", LLAVA, now=now - timedelta(days=8 + i))
    beat_worker(session_factory, "quiet@host", LLAVA, now=now - timedelta(days=6))
    beat_worker(session_factory, "live@host", LLAVA, now=now - timedelta(seconds=5))
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=15, now=now) == 1

    # The longest dead first.
    assert forget_dead_workers(session_factory, kept_for=WEEK, now=now, limit=2) == 2
    assert "dead4@host" not in _nodes(session_factory)
    assert "dead3@host" not in _nodes(session_factory)
    assert forget_dead_workers(session_factory, kept_for=WEEK, now=now, limit=2) == 2
    assert forget_dead_workers(session_factory, kept_for=WEEK, now=now, limit=2) == 1
    assert forget_dead_workers(session_factory, kept_for=WEEK, now=now, limit=2) == 0
    assert _nodes(session_factory) == ["live@host", "quiet@host"]
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=15, now=now) == 1


def test_a_beat_no_longer_deletes_and_the_sweepers_pass_does(
    session_factory: SessionFactory,
) -> None:
    now = utcnow()
    beat_worker(session_factory, "dead@host", LLAVA, now=now - timedelta(days=30))
    beat_worker(session_factory, "live@host", LLAVA, now=now)  # the one owner is the sweeper
    assert _nodes(session_factory) == ["dead@host", "live@host"]

    sweep(session_factory, ListPublisher(), max_attempts=3, batch_size=8, now=now)
    assert _nodes(session_factory) == ["live@host"]
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=15, now=now) == 1

    beat_worker(session_factory, "dead@host", LLAVA, now=now - timedelta(days=30))
    kept = timedelta(days=60)
    sweep(
        session_factory,
        ListPublisher(),
        max_attempts=3,
        batch_size=8,
        now=now,
        workers_kept_for=kept,
    )
    assert _nodes(session_factory) == ["dead@host", "live@host"]


def test_the_setting_is_a_period_of_at_least_a_day() -> None:
    assert make_settings().worker_rows_kept_for_seconds == 7 * 86400
    assert make_settings(worker_rows_kept_for="30d").worker_rows_kept_for_seconds == 30 * 86400
    for bad in ("2h", "soon", "0d"):
        with pytest.raises(ValidationError):
            make_settings(worker_rows_kept_for=bad)
