"""A submit at the edges of its transitions, on SQLite and PostgreSQL: an upload that is slow
(or held), a second submit with the same idempotency key in that window, a sweeper that runs
beside a slow producer, a broker that did not take the first doorbells.

Each race is forced at a real point: a blob store that holds or slows its uploads (a wrapper
around ``Blobs``, storage is real), a publisher that lets the sweeper run just before its
doorbells go out, and ``jobs.hooks`` points. Each test names the invariant of docs/design.md it
checks (invariant I9 is docs/design.md#I9).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory, make_engine, make_session_factory, utcnow
from jobs.dispatch import QUEUE_EMPTY, CeleryPublisher, Publisher
from jobs.errors import RequestError
from jobs.hooks import pause_at
from jobs.lifecycle import claim_items, claim_next, record_results, renew_submission
from jobs.migrate import upgrade_database
from jobs.outcome import ItemOutcome, Outcome
from jobs.states import ItemStatus, JobStatus
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from storage import Blobs, BlobStore, StoredBlob
from tests.helpers import ListPublisher, write_images
from tests.services import free_port

KEY = {"idempotency_key": "k"}


class HeldBlobs(Blobs):
    """Real storage whose uploads call ``on_put(n)`` first (n: uploads so far, from 1), so a
    test can hold or slow the producer while it stores its inputs."""

    def __init__(self, store: BlobStore, on_put: Callable[[int], None]) -> None:
        super().__init__(store)
        self._on_put = on_put
        self._count = 0
        self._lock = threading.Lock()

    def put_content_addressed(self, data: bytes, suffix: str = "") -> StoredBlob:
        with self._lock:
            self._count += 1
            n = self._count
        self._on_put(n)
        return super().put_content_addressed(data, suffix)


class Window:
    """A pause point's hook: the ``nth`` time it is reached, runs ``second`` in another thread
    and gives it ``seconds`` (to commit, or to block on the paused side's locks) before the
    paused side goes on; ``blocked`` says whether it was still waiting then."""

    def __init__(self, second: Callable[[], Any], *, nth: int = 1, seconds: float = 1.0) -> None:
        self.second, self.nth, self.seconds = second, nth, seconds
        self.reached, self.blocked, self.result = 0, False, None
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        self.reached += 1
        if self.reached != self.nth:
            return
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        self._thread.join(self.seconds)
        self.blocked = self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.result = self.second()
        except BaseException as exc:
            self.result = exc

    @property
    def done(self) -> Any:
        assert self._thread is not None, "the point was never reached"
        self._thread.join(60)
        assert not self._thread.is_alive()
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _submit(
    sf: SessionFactory, blobs: Blobs, folder: Path, publisher: Publisher, **kw: Any
) -> SubmitResult:
    request = SubmitRequest.of("caption", [str(folder)], "m", max_new_tokens=4, batch_size=2, **kw)
    return submit_job(
        request, session_factory=sf, blobs=blobs, publisher=publisher, max_prompt_chars=1000
    )


def _jobs(sf: SessionFactory) -> list[Job]:
    with sf() as session:
        return list(session.scalars(select(Job)))


def _items(sf: SessionFactory) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).order_by(Item.seq)))


def _work_off(sf: SessionFactory) -> int:
    ids = [i.id for i in _items(sf) if i.status == ItemStatus.queued]
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60)
    return record_results(
        sf, [ItemOutcome(c.id, c.lease_token, Outcome(text="x")) for c in claimed]
    )


# --- 1: inputs are stored before the transaction opens --------------------------------------


def test_an_upload_longer_than_the_idle_in_transaction_limit_still_writes_its_job(
    pg_url: str, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I2 (and docs/design.md#no-slow-work-inside-a-transaction), PostgreSQL only:
    the server ends a session idle inside a transaction after
    LLAVA_BATCH_DB_IDLE_IN_TRANSACTION_SECONDS. An upload that takes longer than that (here 1 s
    against 2.5 s of storing) must not leave stored inputs and no job: no transaction is open
    while the inputs are stored."""
    # Migrated by an engine without the limit: the migration's own transaction may sit longer
    # than 1 s between statements on a loaded machine, and is not what this test is about.
    migrating = make_engine(pg_url)
    upgrade_database(migrating)
    migrating.dispose()
    engine = make_engine(pg_url, idle_in_transaction_seconds=1)
    sf = make_session_factory(engine)
    folder = tmp_path / "c"
    write_images(folder, 3)
    slow = HeldBlobs(blobs.store, lambda _n: time.sleep(2.5))
    result = _submit(sf, slow, folder, ListPublisher())
    assert result.item_count == 3 and result.dispatched
    assert [i.status for i in _items(sf)] == [ItemStatus.queued] * 3
    engine.dispose()


def test_the_same_key_during_a_held_upload_gets_one_job_and_never_waits_on_a_lock(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Idempotency (docs/guarantees.md): while a first submit is held storing its inputs, a
    second submit with the same key neither waits on the first's locks (PostgreSQL: the key's
    index entry; SQLite: the write lock) nor fails on a lock timeout: it stores (the same,
    content-addressed objects) and writes the job; the first, going on, gets that job back.
    One key, one job, its items once."""
    folder = tmp_path / "c"
    write_images(folder, 3)
    second = Window(
        lambda: _submit(session_factory, blobs, folder, ListPublisher(), **KEY), seconds=5
    )
    held = HeldBlobs(blobs.store, lambda n: second() if n == 1 else None)
    first = _submit(session_factory, held, folder, ListPublisher(), **KEY)
    assert not second.blocked, "the second submit waited on the first one's transaction"
    assert not second.done.existing and first.existing
    assert first.job_id == second.done.job_id
    assert len(_jobs(session_factory)) == 1 and len(_items(session_factory)) == 3


# --- 2: a heartbeat keeps the submit lease while the producer works --------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 11 inputs, batches of 2, chunks of 4 rows: the first chunk is the first batch's 2 rows,
    # then 4, 4 and 1.
    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 4)


def test_a_slow_upload_does_not_let_the_submit_lease_lapse(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariant I9: a live producer's submit lease is renewed by a heartbeat while it stores
    the next chunk's inputs, not only when a chunk commits. Here the lease is 3 s (a loaded
    machine once delayed a heartbeat past a 1.5 s one) and the producer is held inside an
    upload until the lease its last chunk wrote has run out; the sweeper (at the real time)
    then abandons nothing, the submit completes, and its key returns the whole job (not
    ``submit_incomplete``)."""
    monkeypatch.setattr(submit_rows, "SUBMIT_LEASE", timedelta(seconds=3))
    folder = tmp_path / "c"
    write_images(folder, 11)
    swept: list[Any] = []

    def outlast_the_lease(n: int) -> None:
        if n != 7:  # an upload of the third chunk: two chunks are committed
            return
        (job,) = _jobs(session_factory)
        written = job.submit_lease_expires_at
        assert written is not None
        while utcnow() < written + timedelta(seconds=0.5):
            time.sleep(0.1)
        swept.append(_sweep(session_factory, now=utcnow()))
        (job,) = _jobs(session_factory)
        assert job.status == JobStatus.queued  # open: nothing abandoned it
        assert job.submit_lease_expires_at is not None
        assert job.submit_lease_expires_at > utcnow()

    slow = HeldBlobs(blobs.store, outlast_the_lease)
    result = _submit(session_factory, slow, folder, ListPublisher(), idempotency_key="k")
    assert swept and swept[0].abandoned == 0
    assert result.complete and result.item_count == 11
    (job,) = _jobs(session_factory)
    assert job.status != JobStatus.cancelled and job.submit_lease_expires_at is None
    again = _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert again.existing and again.complete and again.job_id == job.id


def _sweep(
    sf: SessionFactory, *, now: datetime, publisher: Publisher | None = None, **kw: Any
) -> Any:
    return sweep(sf, publisher or ListPublisher(), max_attempts=3, batch_size=2, now=now, **kw)


def test_the_heartbeat_stops_with_its_producer_and_the_sweeper_cancels_the_job(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariants I5 and I9: the heartbeat lives only as long as its producer's work. A
    producer that dies between chunks (no word, as kill -9: its own give-up never runs) stops
    renewing; once the lease has run out the sweeper abandons the job, and its key is refused
    (``submit_incomplete``), never a second job."""
    monkeypatch.setattr(submit_rows, "SUBMIT_LEASE", timedelta(seconds=1.5))
    monkeypatch.setattr(submit_rows, "_give_up", lambda _sf, _job_id: None)
    folder = tmp_path / "c"
    write_images(folder, 11)

    class Killed(BaseException):
        pass

    def die(_n: int = 0) -> None:
        raise Killed

    with pause_at("submit:chunk_published", die), pytest.raises(Killed):
        _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    (job,) = _jobs(session_factory)
    lease = job.submit_lease_expires_at
    assert lease is not None
    time.sleep(2.5)  # three heartbeats' time: none may have come
    (job,) = _jobs(session_factory)
    assert job.submit_lease_expires_at == lease
    assert _sweep(session_factory, now=utcnow()).abandoned == 1
    with pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert refused.value.code == "submit_incomplete"


def test_a_heartbeat_that_meets_the_last_chunk_does_not_bring_the_lease_back(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, small_chunks: None
) -> None:
    """Invariant I9, the heartbeat against the last chunk: a renewal that comes while the last
    chunk's transaction clears the lease waits for it (PostgreSQL: the job row; SQLite: the one
    writer) and then changes nothing. A lease set again there would keep the finished job
    from ever being finalised, until the sweeper cancelled it."""
    folder = tmp_path / "c"
    write_images(folder, 11)

    def renew() -> bool:
        (job,) = _jobs(session_factory)
        return renew_submission(session_factory, job.id, lease_until=utcnow() + timedelta(hours=1))

    window = Window(renew, nth=4)  # chunks of 2, 4, 4 and 1: inside the last one's transaction
    with pause_at("submit:chunk_written", window):
        result = _submit(session_factory, blobs, folder, ListPublisher())
    assert window.blocked and window.done is False
    assert result.complete and result.item_count == 11
    (job,) = _jobs(session_factory)
    assert job.submit_lease_expires_at is None
    assert _work_off(session_factory) == 11
    (job,) = _jobs(session_factory)
    assert job.status == JobStatus.completed


def test_a_heartbeat_that_meets_the_sweepers_abandon_does_not_reopen_the_job(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariants I5 and I9, the heartbeat against the abandon: a renewal that comes while the
    sweeper is cancelling a job whose lease ran out (held inside its transaction, the job
    marked) waits for it and changes nothing; the job ends cancelled, its lease as it was."""
    monkeypatch.setattr(submit_rows, "_give_up", lambda _sf, _job_id: None)
    folder = tmp_path / "c"
    write_images(folder, 11)

    class Stalled(BaseException):
        pass

    def stall(_n: int = 0) -> None:
        raise Stalled

    with pause_at("submit:chunk_published", stall), pytest.raises(Stalled):
        _submit(session_factory, blobs, folder, ListPublisher())
    (job,) = _jobs(session_factory)
    lease = job.submit_lease_expires_at
    assert lease is not None
    window = Window(
        lambda: renew_submission(session_factory, job.id, lease_until=utcnow() + timedelta(hours=1))
    )
    with pause_at("abandon:marked", window):
        report = _sweep(session_factory, now=lease + timedelta(seconds=1))
    assert window.blocked and window.done is False and report.abandoned == 1
    (job,) = _jobs(session_factory)
    assert job.status == JobStatus.cancelled and job.submit_lease_expires_at == lease


# --- 4: never sent twice; a re-submit tells the truth about dispatch -------------------------


class SweepFirst:
    """A broker that lets the sweeper run just before the producer's doorbells go out: the
    rows are committed, and the producer asks how many doorbells wait (its first broker call
    after the commit). Like Redis, it tells how many messages wait (none is consumed here) and
    the stamp of the oldest."""

    def __init__(self, sf: SessionFactory, redispatch_after: timedelta, bell_limit: int) -> None:
        self.sf, self.redispatch_after, self.bell_limit = sf, redispatch_after, bell_limit
        self.producer, self.sweeper = _Queue(self), _Queue(self)
        self.reports: list[Any] = []

    def waiting(self, model: str) -> int | None:
        report = _sweep(
            self.sf, now=utcnow(), publisher=self.sweeper, redispatch_after=self.redispatch_after
        )
        self.reports.append(report)
        return self.count()

    def count(self) -> int:
        queues = (self.producer, self.sweeper)
        return sum(len(q.rings) + len(q.batches) for q in queues)

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.producer.ring(model, count, job_id=job_id, dispatched_at=dispatched_at)

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.producer.publish(job_id, item_ids, model=model, dispatched_at=dispatched_at)

    def oldest_waiting(self, model: str) -> datetime | None:
        stamps = [s for s in self.producer.stamps + self.sweeper.stamps if s is not None]
        return min(stamps, default=QUEUE_EMPTY)


class _Queue(ListPublisher):
    """One side's messages, on the one queue that ``broker`` tells the length and age of."""

    def __init__(self, broker: SweepFirst) -> None:
        super().__init__(bell_limit=broker.bell_limit)
        self.broker = broker

    def waiting(self, model: str) -> int | None:
        return self.broker.count()

    def oldest_waiting(self, model: str) -> datetime | None:
        return self.broker.oldest_waiting(model)


def _claim_all(sf: SessionFactory) -> list[str]:
    """Doorbells answered until one claims nothing, each batch recorded: the ids claimed."""
    ids: list[str] = []
    while claimed := claim_next(sf, worker="w", lease_seconds=60):
        record_results(sf, [ItemOutcome(c.id, c.lease_token, Outcome(text="x")) for c in claimed])
        ids += [c.id for c in claimed]
    return ids


@pytest.mark.parametrize("chunked", [False, True], ids=["one-transaction", "chunks"])
def test_rows_whose_upload_outlasts_the_redispatch_age_are_never_sent_again(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunked: bool,
) -> None:
    """Invariants I1 and I2: rows are stamped dispatched after their inputs are stored, just
    before their transaction; an upload slower than the redispatch age (here 0.3 s per input
    against 0.5 s) must not make the sweeper that runs beside the producer, between its commit
    and its doorbells, send the rows again: it re-publishes none by name, the doorbells of
    both together stay within the queue's limit, and each item is claimed once."""
    if chunked:
        monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 4)
    folder = tmp_path / "c"
    count = 6 if chunked else 4
    write_images(folder, count)
    uploaded: list[datetime] = []  # when each input's (slow) upload began its put

    def slow_put(_n: int) -> None:
        time.sleep(0.3)
        uploaded.append(utcnow())

    slow = HeldBlobs(blobs.store, slow_put)
    bell = SweepFirst(session_factory, redispatch_after=timedelta(seconds=0.5), bell_limit=3)
    monkeypatch.setattr("jobs.submit.input_store.UPLOAD_THREADS", 1)
    result = _submit(session_factory, slow, folder, bell)
    assert result.complete and result.dispatched
    items = _items(session_factory)
    assert len(uploaded) == len(items) == count
    for item, put in zip(items, uploaded, strict=True):
        assert item.dispatched_at is not None and item.dispatched_at > put, (item.seq, put)
    assert bell.reports and bell.sweeper.rings  # the sweeper ran beside the producer, with work
    assert [r.republished for r in bell.reports] == [0] * len(bell.reports)
    assert bell.sweeper.batches == [] and bell.producer.batches == []
    assert bell.count() <= bell.bell_limit
    claimed = _claim_all(session_factory)
    assert claimed == [i.id for i in items]  # each once, in order
    assert set(Counter(claimed).values()) == {1}


def test_a_resubmit_says_whether_the_jobs_messages_went_out(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I1 and I2, as a re-submit reports them: a first submit whose broker was down
    leaves its items unstamped for the sweeper; the same key then answers ``dispatched: false``
    (not true), and true once the sweeper has rung for them (and stamped them), after which
    those doorbells' claims do every item."""
    folder = tmp_path / "c"
    write_images(folder, 3)
    dead = CeleryPublisher(f"redis://127.0.0.1:{free_port()}/0", "q")
    first = _submit(session_factory, blobs, folder, dead, idempotency_key="k")
    assert not first.dispatched
    again = _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert again.existing and again.job_id == first.job_id and not again.dispatched
    back = ListPublisher(waiting_count=0, bell_limit=2)
    report = _sweep(session_factory, now=utcnow(), publisher=back)
    assert (report.rung, report.republished) == (2, 0) and back.rings == [("m", None)] * 2
    after = _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert after.existing and after.dispatched
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    assert len(_claim_all(session_factory)) == 3
