"""A big submit writes its rows in chunks, each committed and then rung for at once (its
doorbells: messages that name no item; a worker's claim takes the next batch), on SQLite and
PostgreSQL (real Redis where the broker matters).

Each race is forced, not hoped for: a hook holds the producer at a real point (between two
chunks, or inside a chunk's transaction) while the other side (a worker, the sweeper, a cancel,
a second submit) runs in that window. Each test names the invariant of docs/design.md it
checks (invariant I9 is docs/design.md#I9).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event, func, select

from jobs.db import Item, Job, SessionFactory
from jobs.dispatch import CeleryPublisher, Publisher, doorbells_to_send
from jobs.errors import RequestError
from jobs.hooks import pause_at
from jobs.lifecycle import ItemOutcome, cancel_job, claim_items, claim_next, record_results
from jobs.outcome import Outcome
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, write_images
from tests.services import free_port

# 11 inputs, batches of 2, chunks of 4 rows: the first chunk is the first batch's 2 rows,
# then 4, 4 and 1; each chunk rings a doorbell per batch of its own: 1, 2, 2 and 1.
_INPUTS, _BATCH, _CHUNK_ROWS = 11, 2, 4
_CHUNKS = [2, 4, 4, 1]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", _CHUNK_ROWS)


def _submit(
    sf: SessionFactory, blobs: Blobs, folder: Path, publisher: Publisher, **kw: Any
) -> SubmitResult:
    if not folder.exists():
        write_images(folder, kw.pop("n", _INPUTS))
    kw.pop("n", None)
    request = SubmitRequest.of(
        "caption", [str(folder)], "m", max_new_tokens=4, batch_size=_BATCH, **kw
    )
    return submit_job(
        request, session_factory=sf, blobs=blobs, publisher=publisher, max_prompt_chars=1000
    )


def _job(sf: SessionFactory) -> Job:
    with sf() as session:
        return session.scalars(select(Job)).one()  # every test makes one job


def _items(sf: SessionFactory) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).order_by(Item.seq)))


def _work_off(sf: SessionFactory, ids: list[str] | None = None) -> int:
    """A worker: claims ``ids`` (default: everything queued) and records a caption for each."""
    if ids is None:
        ids = [i.id for i in _items(sf) if i.status == ItemStatus.queued]
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60)
    outcomes = [ItemOutcome(c.id, c.lease_token, Outcome(text="a caption")) for c in claimed]
    return record_results(sf, outcomes)


def _sweep(
    sf: SessionFactory, *, after: timedelta = timedelta(0), publisher: Publisher | None = None
) -> Any:
    from jobs.db import utcnow

    return sweep(
        sf, publisher or ListPublisher(), max_attempts=3, batch_size=_BATCH, now=utcnow() + after
    )


def _claim_all(sf: SessionFactory) -> list[list[str]]:
    """Doorbells answered until one claims nothing: each claim's item ids, in claim order."""
    batches = []
    while claimed := claim_next(sf, worker="w", lease_seconds=60):
        batches.append([c.id for c in claimed])
    return batches


class Between:
    """Runs ``fn(n)`` each time the producer is between two chunks (n = chunks committed)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn, self.reached = fn, 0

    def __call__(self) -> None:
        self.reached += 1
        self.fn(self.reached)


@pytest.fixture
def between() -> Iterator[Callable[[Callable[[int], None]], Between]]:
    with ExitStack() as stack:

        def install(fn: Callable[[int], None]) -> Between:
            hook = Between(fn)
            stack.enter_context(pause_at("submit:chunk_published", hook))
            return hook

        yield install


# --- the small job is unchanged ------------------------------------------------------------


def test_a_small_job_is_one_transaction_then_its_doorbells(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I2 (commit, then ring), as before: a job of at most a chunk of rows is
    written in ONE transaction, holds no submit lease, and its doorbells (one per batch) are
    rung after that commit; they claim every item, in order."""
    commits: list[int] = []
    engine = session_factory.kw["bind"]
    publisher = ListPublisher()

    def listener(_conn: Any) -> None:
        commits.append(len(publisher.rings) + len(publisher.batches))

    event.listen(engine, "commit", listener)
    hook = between(lambda _n: None)
    try:
        result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=_CHUNK_ROWS)
    finally:
        event.remove(engine, "commit", listener)
    assert hook.reached == 0 and result.complete and result.item_count == _CHUNK_ROWS
    # The submit's registration (docs/design.md#collecting-stored-inputs), its rows in one
    # commit before any message, the registration removed.
    assert commits == [0, 0, _CHUNK_ROWS // _BATCH]
    job = _job(session_factory)
    assert job.submit_lease_expires_at is None
    assert publisher.rings == [("m", job.id)] * (_CHUNK_ROWS // _BATCH) and not publisher.batches
    items = _items(session_factory)
    assert {i.dispatched_at for i in items} != {None}
    assert _claim_all(session_factory) == [[i.id for i in items[:2]], [i.id for i in items[2:]]]


# --- the first doorbell goes out before the last row is written -----------------------------


def test_the_first_message_is_on_redis_before_the_last_row_is_committed(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any, redis_url: str
) -> None:
    """Invariant I2 chunk by chunk: every doorbell is rung after the rows it rings for are
    committed, and the first one is on the broker (a real Redis list) while the rest of the job
    is still to be written; a worker answering it then claims the first chunk's rows."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    seen: list[tuple[int, int]] = []  # (doorbells on Redis, rows committed)
    first_claim: list[str] = []

    def look(n: int) -> None:
        seen.append((len(_doorbells(client, f"{queue}.m")), len(_items(session_factory))))
        job = _job(session_factory)
        assert job.submit_lease_expires_at is not None and job.status not in TERMINAL_JOB_STATES
        if n == 1:  # a worker takes the first doorbell's batch while the rest is being written
            first_claim.extend(
                c.id for c in claim_next(session_factory, worker="w", lease_seconds=60)
            )

    between(look)
    result = _submit(session_factory, blobs, tmp_path / "c", CeleryPublisher(redis_url, queue))
    assert result.complete and result.dispatched and result.item_count == _INPUTS
    assert seen[0] == (1, _CHUNKS[0]) and _CHUNKS[0] < _INPUTS
    items = _items(session_factory)
    assert first_claim == [i.id for i in items[: _CHUNKS[0]]]  # only rows already committed
    assert seen == [(1, 2), (3, 6), (5, 10)]
    # A doorbell per batch, each stamped with its chunk's dispatch stamp (taken before the
    # chunk's commit, so no doorbell rang for rows not yet written), in chunk order.
    rung = _doorbells(client, f"{queue}.m")
    assert {kwargs["model"] for kwargs in rung} == {"m"}
    assert [datetime.fromisoformat(kwargs["dispatched_at"]) for kwargs in rung] == [
        i.dispatched_at for i in items if i.seq % _BATCH == 0
    ]
    # The rest is claimed batch by batch, in order, each item once.
    claimed = [first_claim, *_claim_all(session_factory)]
    assert [i for batch in claimed for i in batch] == [i.id for i in items]
    assert [len(batch) for batch in claimed] == [2, 2, 2, 2, 2, 1]
    assert _job(session_factory).submit_lease_expires_at is None  # the last chunk cleared it
    client.delete(f"{queue}.m")


def _doorbells(client: Any, key: str) -> list[dict[str, Any]]:
    """The doorbells waiting in ``key``, oldest first: their kwargs (none names an item)."""
    out = []
    for raw in reversed(client.lrange(key, 0, -1)):  # kombu pushes on the left
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        assert "item_ids" not in kwargs and "job_id" not in kwargs, kwargs
        out.append(kwargs)
    return out


# --- workers and the finaliser while the rows are written -----------------------------------


def test_a_job_is_not_finalised_while_its_rows_are_still_being_written(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I9 and the status contract: between chunks a worker claims and records every
    item written so far and the sweeper runs; the job stays in progress (never completed on a
    part of its items), and completes once the rest is written and done."""

    def finish_all_so_far(_n: int) -> None:
        assert _work_off(session_factory) > 0
        assert _sweep(session_factory).finalised == 0
        job = _job(session_factory)
        assert job.status == JobStatus.in_progress and job.finished_at is None

    between(finish_all_so_far)
    result = _submit(session_factory, blobs, tmp_path / "c", ListPublisher())
    assert result.complete and result.item_count == _INPUTS
    job = _job(session_factory)
    assert job.status == JobStatus.in_progress and job.submit_lease_expires_at is None
    assert _work_off(session_factory) == _CHUNKS[-1]  # record finalises it
    assert _job(session_factory).status == JobStatus.completed
    assert [i.status for i in _items(session_factory)] == [ItemStatus.succeeded] * _INPUTS


# --- cancel during the submit -----------------------------------------------------------------


def test_cancel_between_chunks_stops_the_submit_and_the_job_ends_cancelled(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I9: a cancel between two chunks cancels what is queued, lets the running item
    finish, and no later chunk is written (nor rung for); the job ends cancelled with every
    item terminal, and no doorbell or named message claims anything of it."""
    publisher = ListPublisher()

    def cancel_with_one_running(n: int) -> None:
        if n == 1:
            first = _items(session_factory)[0]
            claimed = claim_items(session_factory, [first.id], worker="w", lease_seconds=60)
            assert len(claimed) == 1
            assert cancel_job(session_factory, _job(session_factory).id) == JobStatus.cancelling
            record_results(
                session_factory,
                [ItemOutcome(claimed[0].id, claimed[0].lease_token, Outcome(text="kept"))],
            )

    between(cancel_with_one_running)
    result = _submit(session_factory, blobs, tmp_path / "c", publisher)
    assert not result.complete and result.item_count == _CHUNKS[0]
    items = _items(session_factory)
    assert [i.status for i in items] == [ItemStatus.succeeded, ItemStatus.cancelled]
    assert items[0].result_text == "kept"
    job = _job(session_factory)
    assert job.status == JobStatus.cancelled and job.submit_lease_expires_at is not None
    assert publisher.rings == [("m", job.id)]  # the first chunk's doorbell only
    assert claim_next(session_factory, worker="w", lease_seconds=60) == []
    ids = [i.id for i in items]
    assert claim_items(session_factory, ids, worker="w", lease_seconds=60) == []


def test_cancel_while_a_chunk_is_being_written_also_cancels_that_chunk(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I9: a cancel that comes while a chunk's transaction holds the job row waits for
    it (PostgreSQL: the row lock; SQLite: the one writer), then cancels its rows too; no queued
    item ever sits in a closing job, and the submit writes nothing after."""
    done: dict[str, Any] = {}
    state = {"reached": 0}
    canceller: list[threading.Thread] = []

    def in_second_chunk() -> None:
        state["reached"] += 1
        if state["reached"] != 2:
            return
        job_id = _job(session_factory).id  # the first chunk is committed: the job is visible
        thread = threading.Thread(
            target=lambda: done.update(status=cancel_job(session_factory, job_id))
        )
        thread.start()
        thread.join(1.0)
        done["blocked"] = thread.is_alive()
        canceller.append(thread)

    def after_second_chunk() -> None:
        if canceller:  # the producer waits for the cancel here, SQLite's busy wait being unfair
            canceller[0].join(30)

    with (
        pause_at("submit:chunk_written", in_second_chunk),
        pause_at("submit:chunk_published", after_second_chunk),
    ):
        result = _submit(session_factory, blobs, tmp_path / "c", ListPublisher())
    assert done["blocked"] and done["status"] == JobStatus.cancelled
    assert not result.complete and result.item_count == _CHUNKS[0] + _CHUNKS[1]
    items = _items(session_factory)
    assert len(items) == 6 and {i.status for i in items} == {ItemStatus.cancelled}
    assert _job(session_factory).status == JobStatus.cancelled


# --- the producer stops half-way ------------------------------------------------------------


def test_a_producer_killed_between_chunks_leaves_a_job_the_sweeper_cancels(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    between: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariants I5 and I9, no job half-written forever: a producer that dies without a word
    (kill -9: nothing of it runs after) leaves a job that is not finalised however its items
    stand, until its submit lease runs out; then the sweeper cancels it (queued items
    cancelled, the running one finishes). The same key is refused, never a second job."""
    monkeypatch.setattr(submit_rows, "_give_up", lambda _sf, _job_id: None)  # kill -9

    class Killed(BaseException):
        pass

    def die(n: int) -> None:
        if n == 2:
            raise Killed

    between(die)
    folder = tmp_path / "c"
    with pytest.raises(Killed):
        _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    items = _items(session_factory)
    assert len(items) == _CHUNKS[0] + _CHUNKS[1]
    _work_off(session_factory, [i.id for i in items[:2]])  # the first chunk is done
    running = claim_items(session_factory, [items[2].id], worker="w", lease_seconds=3600)
    assert _sweep(session_factory).abandoned == 0  # the lease still runs
    assert _job(session_factory).status == JobStatus.in_progress

    report = _sweep(session_factory, after=submit_rows.SUBMIT_LEASE + timedelta(seconds=1))
    assert report.abandoned == 1
    assert _job(session_factory).status == JobStatus.cancelling
    record_results(
        session_factory,
        [ItemOutcome(running[0].id, running[0].lease_token, Outcome(text="kept"))],
    )
    job = _job(session_factory)
    assert job.status == JobStatus.cancelled and job.submit_lease_expires_at is not None
    assert [i.status for i in _items(session_factory)] == [ItemStatus.succeeded] * 3 + [
        ItemStatus.cancelled
    ] * 3

    with pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert refused.value.code == "submit_incomplete"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Item)) == 6


def test_an_interrupted_submit_cancels_its_own_job_at_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I9: Ctrl-C between chunks cancels the half-written job right away (no wait for
    the lease); every written item is terminal, and the job ends cancelled."""

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    between(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _submit(session_factory, blobs, tmp_path / "c", ListPublisher())
    assert _job(session_factory).status == JobStatus.cancelled
    assert {i.status for i in _items(session_factory)} == {ItemStatus.cancelled}


def test_a_producer_whose_lease_ran_out_stops_once_the_sweeper_cancelled_its_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I9: the sweeper and a slow (not dead) producer agree through the job row: once
    the job is abandoned, the producer writes no further chunk into it."""

    def sweep_late(n: int) -> None:
        if n == 1:
            after = submit_rows.SUBMIT_LEASE + timedelta(seconds=1)
            assert _sweep(session_factory, after=after).abandoned == 1

    between(sweep_late)
    result = _submit(session_factory, blobs, tmp_path / "c", ListPublisher())
    assert not result.complete and result.item_count == _CHUNKS[0]
    assert _job(session_factory).status == JobStatus.cancelled
    assert [i.status for i in _items(session_factory)] == [ItemStatus.cancelled] * _CHUNKS[0]


# --- idempotency ----------------------------------------------------------------------------


def test_the_same_key_during_a_submit_returns_the_job_being_written(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Idempotency (docs/cli.md#submit): one key, one job, its items once. A second submit
    with the key
    while the first is between chunks gets that job (incomplete, so far); afterwards, the
    whole job."""
    folder = tmp_path / "c"
    write_images(folder, _INPUTS)
    again: list[SubmitResult] = []

    def resubmit(n: int) -> None:
        if n == 1:
            again.append(
                _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
            )

    between(resubmit)
    first = _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert again[0].existing and not again[0].complete and again[0].job_id == first.job_id
    assert again[0].item_count == _CHUNKS[0]
    last = _submit(session_factory, blobs, folder, ListPublisher(), idempotency_key="k")
    assert last.existing and last.complete and last.item_count == _INPUTS
    assert [i.seq for i in _items(session_factory)] == list(range(_INPUTS))


# --- the broker is down ---------------------------------------------------------------------


def test_a_dead_broker_leaves_every_chunk_for_the_sweeper(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I1 and I2: with the broker down, every chunk is still committed, none is
    stamped dispatched (the failed ring undid its chunk's stamp, later chunks were never
    stamped), and the sweeper rings for them all: it tops the model's queue up to its limit,
    stamps every item it rang for, and the doorbells claim every item, in order."""
    dead = CeleryPublisher(f"redis://127.0.0.1:{free_port()}/0", "q")
    result = _submit(session_factory, blobs, tmp_path / "c", dead)
    assert result.complete and not result.dispatched and result.item_count == _INPUTS
    assert {i.dispatched_at for i in _items(session_factory)} == {None}
    back = ListPublisher(waiting_count=1, bell_limit=4)  # the broker is back, one bell waits
    report = _sweep(session_factory, publisher=back)
    assert (report.rung, report.republished) == (3, 0) and back.batches == []
    assert back.rings == [("m", None)] * 3
    items = _items(session_factory)
    assert None not in {i.dispatched_at for i in items}  # rung for: no longer "pending"
    claimed = _claim_all(session_factory)
    assert [i for batch in claimed for i in batch] == [i.id for i in items]


# --- the broker's queue stays bounded however big the job -----------------------------------


def test_a_big_submit_leaves_at_most_bell_limit_doorbells_on_redis(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any, redis_url: str
) -> None:
    """Issue 22, the broker stops growing with the backlog: a job of 40 batches, written in
    21 chunks by a real CeleryPublisher on real Redis, never has more than ``bell_limit``
    messages in its model's queue (between every two chunks and after the last), where one
    message per batch would be 40; and those few doorbells, each answered by a worker that
    rings once more after a claim (``workers.tasks``), still get every item done, in order."""
    limit, batches = 5, 40
    queue = f"q-{uuid.uuid4().hex[:8]}"
    key = f"{queue}.m"
    client = redis.Redis.from_url(redis_url)
    publisher = CeleryPublisher(redis_url, queue, bell_limit=limit)
    lengths: list[int] = []
    between(lambda _n: lengths.append(client.llen(key)))
    result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=batches * _BATCH)
    assert result.complete and result.dispatched and result.item_count == batches * _BATCH
    assert len(lengths) == 20  # 21 chunks: 2 rows, then 4 at a time
    assert lengths[:4] == [1, 3, 5, 5]  # filled up to the limit, then no further
    assert max(lengths) <= limit and client.llen(key) == limit
    assert len(_doorbells(client, key)) == limit

    claimed: list[str] = []
    while client.rpop(key) is not None:  # a worker takes a doorbell...
        got = claim_next(session_factory, worker="w", lease_seconds=60)
        if got:  # ...and, having found work, rings once more
            publisher.ring("m", doorbells_to_send(publisher, "m", 1))
            record_results(
                session_factory, [ItemOutcome(c.id, c.lease_token, Outcome(text="x")) for c in got]
            )
        claimed += [c.id for c in got]
        assert client.llen(key) <= limit
    assert claimed == [i.id for i in _items(session_factory)]
    assert _job(session_factory).status == JobStatus.completed
