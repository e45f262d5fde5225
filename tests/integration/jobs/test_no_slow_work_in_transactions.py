"""No input upload or read, model load or broker call runs inside an open database transaction
(docs/design.md#no-slow-work-inside-a-transaction), over the real paths, on SQLite and
PostgreSQL: a submit (small and chunked, with an idempotent re-submit), a worker's batch and a
sweep, with real Redis as the broker.

A guard (``tests.txguard``) follows every transaction through SQLAlchemy's events and checks
each slow call; a call made while its thread, or the thread that handed it the work, is inside
a transaction is a violation. Each test names the invariant of docs/design.md it protects.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from jobs.db import Item, SessionFactory, utcnow
from jobs.dispatch import CeleryPublisher
from jobs.states import ItemStatus
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import ListPublisher, make_resources, write_images
from tests.txguard import GuardedBlobs, GuardedPublisher, TransactionTracker, guarded_loader
from workers.pipeline import process_batch


@pytest.fixture
def tracker(session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch) -> Any:
    watched = TransactionTracker()
    with watched.watching(session_factory.kw["bind"], monkeypatch):
        yield watched


@pytest.fixture
def guarded(blobs: Blobs, tracker: TransactionTracker) -> GuardedBlobs:
    return GuardedBlobs(blobs.store, tracker)


@pytest.fixture
def broker(redis_url: str, tracker: TransactionTracker) -> Any:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    yield GuardedPublisher(CeleryPublisher(redis_url, queue), tracker)
    redis.Redis.from_url(redis_url).delete(f"{queue}.m")


def _submit(
    sf: SessionFactory, blobs: Blobs, publisher: Any, *sources: Path | str, **kw: Any
) -> SubmitResult:
    named = [str(source) for source in sources]
    request = SubmitRequest.of("caption", named, "m", max_new_tokens=4, batch_size=2, **kw)
    return submit_job(
        request, session_factory=sf, blobs=blobs, publisher=publisher, max_prompt_chars=1000
    )


def _bucket_images(s3_client: Any, bucket: str, tmp_path: Path) -> str:
    for path in write_images(tmp_path / "for-s3", 2, prefix="s3"):
        s3_client.put_object(Bucket=bucket, Key=f"cat/{path.name}", Body=path.read_bytes())
    return f"s3://{bucket}/cat/"


def _clean(tracker: TransactionTracker, *expected: str) -> None:
    assert not tracker.violations, "\n\n".join(tracker.violations)
    for what in expected:  # the guard saw the work it guards: the test is not vacuous
        assert tracker.calls[what] > 0, (what, tracker.calls)


def test_the_guard_sees_an_upload_inside_a_transaction_in_this_thread_or_a_pool(
    session_factory: SessionFactory, guarded: GuardedBlobs, tracker: TransactionTracker
) -> None:
    """The guard itself: an upload inside an open transaction is caught, made in the
    transaction's thread or in a pool it waits on; an upload after the commit is not."""
    with session_factory.begin() as session:
        session.execute(select(1))
        guarded.put_content_addressed(b"in the thread")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(guarded.put_content_addressed, [b"in a pool"]))
    assert len(tracker.violations) == 2
    tracker.violations.clear()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(guarded.put_content_addressed, [b"after the commit"]))
    guarded.put_content_addressed(b"after the commit, here")
    _clean(tracker, "store an input")


def test_a_submit_stores_and_publishes_outside_every_transaction(
    session_factory: SessionFactory,
    guarded: GuardedBlobs,
    broker: GuardedPublisher,
    tracker: TransactionTracker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_client: Any,
    s3_bucket: str,
) -> None:
    """Invariants I2 and I9 at their edges: a small job (one transaction) and a big one
    (chunks) store every input before the transaction that writes its rows opens, and publish
    after it commits; an idempotent re-submit does neither inside one."""
    small = tmp_path / "small"
    write_images(small, 3)
    prefix = _bucket_images(s3_client, s3_bucket, tmp_path)
    first = _submit(session_factory, guarded, broker, small, prefix, idempotency_key="k")
    assert first.item_count == 5 and first.dispatched
    again = _submit(session_factory, guarded, broker, small, prefix, idempotency_key="k")
    assert again.existing and again.job_id == first.job_id

    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 4)
    big = tmp_path / "big"
    write_images(big, 11)
    chunked = _submit(session_factory, guarded, broker, big)
    assert chunked.complete and chunked.dispatched and chunked.item_count == 11
    _clean(tracker, "store an input", "list inputs", "publish")


def test_a_worker_batch_loads_and_reads_outside_every_transaction(
    session_factory: SessionFactory,
    guarded: GuardedBlobs,
    broker: GuardedPublisher,
    tracker: TransactionTracker,
    tmp_path: Path,
    s3_client: Any,
    s3_bucket: str,
) -> None:
    """Invariants I3 and I4 at their edges: the claim, the lease's heartbeat and the record
    are short transactions; the model is loaded and every input read (stored ones and a
    user's bucket's) outside them."""
    folder = tmp_path / "c"
    write_images(folder, 3)
    prefix = _bucket_images(s3_client, s3_bucket, tmp_path)
    submitted = _submit(session_factory, guarded, broker, folder, prefix)
    res = make_resources(session_factory, guarded, FakeEngine(), worker_slots=2)
    res.engine_loader = guarded_loader(FakeEngine(), tracker)
    with session_factory() as session:
        ids = list(session.scalars(select(Item.id).where(Item.job_id == submitted.job_id)))
    report = process_batch(ids, res)
    assert report.succeeded == 5, report
    _clean(tracker, "load the model", "read an input")


def test_a_sweep_asks_and_publishes_outside_every_transaction(
    session_factory: SessionFactory,
    guarded: GuardedBlobs,
    broker: GuardedPublisher,
    tracker: TransactionTracker,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Invariant I1 at its edge: a sweep's steps are short transactions; the broker is asked
    how many messages wait and for its oldest one, items that lost a worker are re-published
    by name, and the model's queue is rung for, all outside them."""
    folder = tmp_path / "c"
    write_images(folder, 4)
    submitted = _submit(session_factory, guarded, broker, folder)
    redis.Redis.from_url(redis_url).delete(broker.inner.queue + ".m")  # the broker was flushed
    with session_factory.begin() as session:  # their messages were lost
        session.execute(
            update(Item).where(Item.job_id == submitted.job_id).values(dispatched_at=None)
        )
        lost = list(
            session.scalars(
                select(Item.id).where(Item.job_id == submitted.job_id).order_by(Item.seq).limit(2)
            )
        )
        session.execute(update(Item).where(Item.id.in_(lost)).values(attempts=1))  # lost a worker
    report = sweep(session_factory, broker, max_attempts=3, batch_size=2, now=utcnow())
    # The two that lost a worker went out by name, each alone; the rest are rung for, the
    # queue topped up to its limit counting those two.
    assert (report.republished, report.rung) == (2, broker.bell_limit - 2)
    assert broker.inner.waiting("m") == broker.bell_limit
    with session_factory() as session:
        statuses = set(session.scalars(select(Item.status)))
        stamps = set(session.scalars(select(Item.dispatched_at)))
    assert statuses == {ItemStatus.queued} and None not in stamps
    _clean(tracker, "ask the broker", "publish")


class _GuardedOutput:
    """A run's output whose every write asks the guard: a slow reader of stdout must not hold
    the read transaction open."""

    def __init__(self, tracker: TransactionTracker) -> None:
        self.tracker = tracker
        self.writer = self
        self.items: list[str] = []

    def write(self, item: Item) -> None:
        self.tracker.check("write output")
        self.items.append(item.id)

    def flush(self) -> None:
        self.tracker.check("write output")


def test_a_run_writes_its_output_outside_every_transaction(
    session_factory: SessionFactory,
    blobs: Blobs,
    tracker: TransactionTracker,
    tmp_path: Path,
) -> None:
    """docs/design.md#no-slow-work-inside-a-transaction, for `run`'s streamed output: the
    finished items are read in a short transaction, then written."""
    from jobs.cli.run_output import FinishedItems

    folder = tmp_path / "r"
    write_images(folder, 5)
    submitted = _submit(session_factory, blobs, ListPublisher(), folder)
    with session_factory() as session:
        ids = list(session.scalars(select(Item.id).where(Item.job_id == submitted.job_id)))
    process_batch(ids, make_resources(session_factory, blobs, FakeEngine()))
    output = _GuardedOutput(tracker)
    stream = FinishedItems(session_factory, submitted.job_id, output)  # type: ignore[arg-type]
    assert stream.write_finished() == 5 and len(output.items) == 5
    _clean(tracker, "write output")
