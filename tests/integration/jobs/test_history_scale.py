"""Costs flat in a job's size, on SQLite and PostgreSQL: the "job finished?" probe and the
results' pages read one index range whatever the planner knows, and retry and cancel work in
bounded statements (issue 28). Jobs of thousands of rows are written in one INSERT … SELECT
(``tests.bulk``); their plans are read before any ANALYZE, as right after a big submit."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine

from jobs.db import Item, ItemPage, Job, SessionFactory
from jobs.hooks import pause_at
from jobs.lifecycle import (
    cancel_job,
    claim_items,
    claim_next,
    finalise_jobs,
    is_postgres,
    jobs_ready_to_finalise,
    requeue_failed,
)
from jobs.lifecycle.common import BATCH_ROWS
from jobs.queries import iter_items
from jobs.sweeper import sweep
from tests.bulk import bulk_job
from tests.helpers import ListPublisher, statuses
from tests.interleaving import Interleaving
from tests.plans import capture, plans_of


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


# --- retry and cancel in bounded statements ---------------------------------------------------


def test_retry_of_more_failed_items_than_a_statement_can_bind_requeues_them_all(
    session_factory: SessionFactory,
) -> None:
    """docs/design.md#I5: a retry requeues every failed item, however many: 70,000 ids bound to
    one statement passed PostgreSQL's limit of 65,535 parameters and the retry rolled back.
    Statements of at most BATCH_ROWS rows, in one transaction."""
    job_id = bulk_job(session_factory, 70_000, item_status="failed", job_status="failed")
    with session_factory.begin() as session:  # pages of an earlier attempt go with the retry
        session.execute(
            text(
                "INSERT INTO item_pages (id, item_id, page_number, error_code, created_at) "
                "SELECT id, id, 1, 'output_truncated', created_at FROM items "
                "WHERE job_id = :job AND seq IN (0, 15000, 69999)"
            ),
            {"job": job_id},
        )
    requeued = requeue_failed(session_factory, job_id)
    with session_factory() as session:
        seqs = session.scalars(select(Item.seq).where(Item.id.in_(requeued[:3] + requeued[-3:])))
        assert sorted(seqs) == [0, 1, 2, 69997, 69998, 69999]
        by_status = dict(
            session.execute(
                select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
            ).all()
        )
        assert session.scalar(select(func.count()).select_from(ItemPage)) == 0
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "in_progress"
    assert len(requeued) == len(set(requeued)) == 70_000
    assert by_status == {"queued": 70_000}


def test_retry_of_a_few_failed_items_among_many_touches_only_those(
    session_factory: SessionFactory,
) -> None:
    """The batches start at the next failed item (an index probe), so a few failed items
    among many cost a few statements; the rest of the job is left as it is."""
    job_id = bulk_job(session_factory, 25_000, item_status="succeeded", job_status="completed")
    with session_factory.begin() as session:
        session.execute(
            text("UPDATE items SET status = 'failed' WHERE job_id = :job AND seq IN (3, 24000)"),
            {"job": job_id},
        )
    engine = _engine(session_factory)
    with capture(engine) as ran:
        requeued = requeue_failed(session_factory, job_id)
    assert len(requeued) == 2
    assert sum(1 for r in ran if r.sql.lstrip().startswith("UPDATE items")) == 2
    with session_factory() as session:
        assert statuses(session_factory, job_id).count("queued") == 2
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "in_progress"


def _touch_job_row(session_factory: SessionFactory, job_id: str) -> int:
    """Writes the job row as another session would, waiting for its lock 200 ms at most."""
    with session_factory.begin() as session:
        if is_postgres(session):
            session.execute(text("SET LOCAL lock_timeout = '200ms'"))
        return int(
            session.execute(
                update(Job).where(Job.id == job_id).values(priority=Job.priority + 1)
            ).rowcount  # type: ignore[attr-defined]
        )


def test_cancel_leaves_the_job_row_free_between_its_batches(
    session_factory: SessionFactory,
) -> None:
    """A cancel marks the job in a short transaction, then cancels its queued items in
    batches, each its own transaction: between two, another session writes the job row at
    once, and no claim takes an item of the cancelling job. The job still ends cancelled
    with every queued item cancelled (docs/design.md#I5)."""
    job_id = bulk_job(session_factory, 25_000)
    seen: dict[str, object] = {}

    def between_batches() -> None:
        with session_factory() as session:
            seen["status"] = session.scalar(select(Job.status).where(Job.id == job_id))
        seen["touched"] = _touch_job_row(session_factory, job_id)
        seen["claimed"] = claim_next(session_factory, worker="w", lease_seconds=60)
        with session_factory() as session:
            queued = session.scalars(
                select(Item.id).where(Item.job_id == job_id, Item.status == "queued").limit(8)
            ).all()
        seen["named"] = claim_items(session_factory, list(queued), worker="w", lease_seconds=60)

    race = Interleaving("cancel:batch", window=10)
    said, _ = race.run(lambda: cancel_job(session_factory, job_id), between_batches)
    assert race.second_blocked is False
    assert seen == {"status": "cancelling", "touched": 1, "claimed": [], "named": []}
    assert said == "cancelled"
    assert set(statuses(session_factory, job_id)) == {"cancelled"}


def test_a_cancel_stopped_between_batches_is_finished_by_the_sweeper(
    session_factory: SessionFactory,
) -> None:
    """A cancel that dies half-way leaves a cancelling job with queued items: the sweeper's
    pass cancels them and ends the job."""
    job_id = bulk_job(session_factory, 25_000)

    class Died(Exception):
        pass

    def die() -> None:
        raise Died

    with pause_at("cancel:batch", die), pytest.raises(Died):
        cancel_job(session_factory, job_id)
    left = statuses(session_factory, job_id)
    assert left.count("cancelled") == BATCH_ROWS and left.count("queued") == 15_000
    sweep(session_factory, ListPublisher(), max_attempts=3, batch_size=8)
    assert set(statuses(session_factory, job_id)) == {"cancelled"}
    with session_factory() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"
