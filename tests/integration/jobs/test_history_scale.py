"""Costs flat in a job's size, on SQLite and PostgreSQL: the "job finished?" probe and the
results' pages read one index range whatever the planner knows, and retry and cancel work in
bounded statements (issue 28). Jobs of thousands of rows are written in one INSERT … SELECT
(``tests.bulk``); their plans are read before any ANALYZE, as right after a big submit."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from jobs.db import SessionFactory
from jobs.lifecycle import finalise_jobs, jobs_ready_to_finalise
from tests.bulk import bulk_job
from tests.plans import plans_of


def _engine(session_factory: SessionFactory) -> Engine:
    engine: Engine = session_factory.kw["bind"]
    return engine


def _no_statistics(engine: Engine) -> None:
    """No ANALYZE of items from here on, autovacuum's included: the plans are what a job
    submitted a moment ago gets."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE items SET (autovacuum_enabled = false)"))


def _assert_index_probe(plan: str, engine: Engine, *indexes: str) -> None:
    """One range of one of ``indexes``, read in its order: no scan, no sort, no aggregate."""
    if engine.dialect.name == "postgresql":
        assert "Seq Scan on items" not in plan, plan
        assert "Aggregate" not in plan and "Sort" not in plan, plan
        assert any(f"using {index} on items" in plan for index in indexes), plan
    else:
        assert "SCAN items" not in plan and "TEMP B-TREE" not in plan, plan
        assert any(f"INDEX {index} " in plan for index in indexes), plan


@pytest.fixture
def big_job(session_factory: SessionFactory) -> str:
    _no_statistics(_engine(session_factory))
    # Other jobs' rows too, so a scan past the job's own would show. Below about 20,000 rows
    # PostgreSQL's guesses happened to pick a good plan for the old probe.
    bulk_job(session_factory, 2000, item_status="succeeded", job_status="completed")
    return bulk_job(session_factory, 30_000)


def test_the_finished_probe_reads_one_index_entry_per_state(
    session_factory: SessionFactory, big_job: str
) -> None:
    """docs/design.md#I9: finalising never counts a job's items. The probe after a recorded
    batch, and the finalise's own check, stop at the first queued or running row of the
    (job_id, status, seq) index, with no statistics to steer the planner."""
    engine = _engine(session_factory)
    probes = plans_of(
        engine, lambda: jobs_ready_to_finalise(session_factory, among=[big_job]), matching="jobs"
    )
    finalise = plans_of(
        engine, lambda: finalise_jobs(session_factory, [big_job]), matching="UPDATE jobs"
    )
    for plan in [*probes, *finalise]:
        _assert_index_probe(plan, engine, "ix_items_job_status_seq")
    assert jobs_ready_to_finalise(session_factory, among=[big_job]) == []
