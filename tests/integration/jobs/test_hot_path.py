"""The worker's hot path to the database: what one batch costs in statements, on SQLite and
PostgreSQL. Every message makes these calls, and their Python runs beside the model's (which
waits for the GIL between its ops), so a statement saved is model time won."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event, select, text

from jobs.db import Item, Job, SessionFactory, commit_without_flush, utcnow
from jobs.lifecycle import claim_items, record_results
from jobs.states import JobStatus
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, migrated_session_factory, submit_captions
from tests.helpers import caption_outcome as _ok


@contextmanager
def counting(session_factory: SessionFactory) -> Iterator[list[str]]:
    """The SQL statements sent while inside (an executemany counts once)."""
    engine = session_factory.kw["bind"]
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_batch_costs_a_fixed_number_of_statements_whatever_its_size(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=24)
    first = claim_items(session_factory, ids[:8], worker="w", lease_seconds=60)
    with session_factory() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "in_progress"

    # A later claim of the started job: its UPDATE and the read of what it took, no job write.
    with counting(session_factory) as claim_sent:
        claimed = claim_items(session_factory, ids[8:16], worker="w", lease_seconds=60)
    assert len(claimed) == 8
    assert claim_sent == ["UPDATE", "SELECT"], claim_sent

    # Recording 8 results: one UPDATE for all of them, then the probe whether their job is
    # done (no finalising write while items remain), which finds the job from the items; on
    # PostgreSQL, after the write, the SET that lets its commit return before the disk flush.
    with counting(session_factory) as record_sent:
        written = record_results(session_factory, [_ok(c.id, c.lease_token) for c in claimed])
    assert written == 8
    postgres = session_factory.kw["bind"].dialect.name == "postgresql"
    unflushed = ["SET"] if postgres else []
    assert record_sent == ["UPDATE", *unflushed, "SELECT"], record_sent
    assert record_results(session_factory, [_ok(c.id, c.lease_token) for c in first]) == 8
    with session_factory() as session:
        done = session.scalars(select(Item.result_text).where(Item.id.in_(ids[:16]))).all()
    assert done == ["a caption"] * 16


def test_one_lost_lease_in_a_batch_drops_only_that_result(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Fencing (a result is written only under its own lease) holds when a batch is written
    in one statement: the item whose lease was taken is refused, its batch-mates are kept."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=3)
    start = utcnow()
    lost = claim_items(session_factory, ids[:1], worker="A", lease_seconds=10, now=start)
    sweep(
        session_factory,
        ListPublisher(),
        max_attempts=3,
        batch_size=8,
        now=start + timedelta(seconds=11),
    )
    (taken,) = claim_items(session_factory, ids[:1], worker="B", lease_seconds=60)
    kept = claim_items(session_factory, ids[1:], worker="A", lease_seconds=60)
    outcomes = [_ok(c.id, c.lease_token) for c in lost + kept]
    assert record_results(session_factory, outcomes) == 2
    with session_factory() as session:
        rows = {
            item.id: (item.status, item.worker)
            for item in session.scalars(select(Item).where(Item.job_id == job_id))
        }
    assert rows[taken.id] == ("running", "B")
    assert [rows[c.id] for c in kept] == [("succeeded", "A"), ("succeeded", "A")]
    assert record_results(session_factory, [_ok(taken.id, taken.lease_token)]) == 1
    with session_factory() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.completed


def test_a_commit_without_flush_is_for_its_own_transaction_only(migrated_pg_url: str) -> None:
    """PostgreSQL only (SQLite in WAL mode has no such setting): the recorded batch's commit
    does not wait for the disk; every other transaction on the same pooled connection (a
    job's rows, finalising) still does."""
    session_factory = migrated_session_factory(migrated_pg_url)
    show = text("SHOW synchronous_commit")
    with session_factory.begin() as session:
        commit_without_flush(session)
        assert session.scalar(show) == "off"
        pid = session.scalar(text("SELECT pg_backend_pid()"))
    with session_factory() as session:
        assert session.scalar(text("SELECT pg_backend_pid()")) == pid  # the same connection
        assert session.scalar(show) == "on"
