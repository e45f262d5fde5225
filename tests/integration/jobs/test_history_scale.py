"""Costs flat in a job's size, on SQLite and PostgreSQL: the "job finished?" probe and the
results' pages read one index range whatever the planner knows, and retry and cancel work in
bounded statements (issue 28). Jobs of thousands of rows are written in one INSERT … SELECT
(``tests.bulk``); their plans are read before any ANALYZE, as right after a big submit."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from jobs.db import SessionFactory
from jobs.lifecycle import finalise_jobs, jobs_ready_to_finalise
from jobs.queries import iter_items
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


@pytest.mark.parametrize("statuses", [None, ["queued"], ["failed", "queued"]])
def test_results_read_each_page_as_one_bounded_range_of_an_index(
    session_factory: SessionFactory, big_job: str, statuses: list[str] | None
) -> None:
    """``results`` reads a job in pages of ``after < seq <= after + n`` through the (job_id, seq)
    index (or, for states, the (job_id, status, seq) one): each page reads its own rows and no
    more, whatever plan is chosen, so an export is linear in the job's size. The open-ended
    ``seq > after ORDER BY seq LIMIT n`` was planned, with no statistics, as a read of every
    remaining row of the job and a sort, for each page."""
    engine = _engine(session_factory)

    def read_some() -> Any:
        with session_factory() as session:
            pages = iter_items(session, big_job, statuses=statuses, chunk=1000)
            return sum(1 for _ in itertools.islice(pages, 3000))

    plans = plans_of(engine, read_some, matching="FROM items")
    for plan in plans:
        if engine.dialect.name == "postgresql":
            assert "Seq Scan on items" not in plan, plan
            assert "ix_items_job" in plan and "seq <= " in plan, plan
        else:
            assert "SCAN items" not in plan, plan
            assert "INDEX ix_items_job" in plan and "seq>? AND seq<?" in plan, plan


def test_results_read_every_item_once_in_order_across_a_gap_in_seq(
    session_factory: SessionFactory,
) -> None:
    """Pages are windows of seq; a job's seqs are dense, but a gap is jumped, not an end."""
    job_id = bulk_job(session_factory, 2500)
    with session_factory.begin() as session:
        session.execute(
            text("DELETE FROM items WHERE job_id = :job AND seq >= 700 AND seq < 1900"),
            {"job": job_id},
        )
        session.execute(
            text("UPDATE items SET status = 'failed' WHERE job_id = :job AND seq IN (5, 2400)"),
            {"job": job_id},
        )
    with session_factory() as session:
        every = [item.seq for item in iter_items(session, job_id, chunk=300)]
        failed = [item.seq for item in iter_items(session, job_id, statuses=["failed"], chunk=300)]
    assert every == [*range(700), *range(1900, 2500)]
    assert failed == [5, 2400]
