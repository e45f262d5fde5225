"""A big submit writes its rows in chunks, each committed and then published at once, on SQLite
and PostgreSQL (real Redis where the broker matters).

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
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event, func, select

from jobs.db import Item, Job, SessionFactory
from jobs.dispatch import CeleryPublisher, Publisher
from jobs.errors import RequestError
from jobs.hooks import pause_at
from jobs.lifecycle import ItemOutcome, cancel_job, claim_items, record_results
from jobs.outcome import Outcome
from jobs.states import TERMINAL_JOB_STATES, ItemStatus, JobStatus
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, write_images
from tests.services import free_port

# 11 inputs, messages of 2, chunks of 4 rows: the first chunk is the first message's 2 rows,
# then 4, 4 and 1.
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


def _sweep(sf: SessionFactory, *, after: timedelta = timedelta(0)) -> Any:
    from jobs.db import utcnow

    return sweep(sf, ListPublisher(), max_attempts=3, batch_size=_BATCH, now=utcnow() + after)


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


def test_a_small_job_is_one_transaction_then_its_messages(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any
) -> None:
    """Invariant I2 (commit, then publish), as before: a job of at most a chunk of rows is
    written in ONE transaction, holds no submit lease, and is published after that commit."""
    commits: list[int] = []
    engine = session_factory.kw["bind"]
    publisher = ListPublisher()

    def listener(_conn: Any) -> None:
        commits.append(len(publisher.batches))

    event.listen(engine, "commit", listener)
    hook = between(lambda _n: None)
    try:
        result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=_CHUNK_ROWS)
    finally:
        event.remove(engine, "commit", listener)
    assert hook.reached == 0 and result.complete and result.item_count == _CHUNK_ROWS
    assert commits == [0]  # one commit, before any message
    assert _job(session_factory).submit_lease_expires_at is None
    assert publisher.item_ids == [i.id for i in _items(session_factory)]


# --- the first message goes out before the last row is written ------------------------------


def test_the_first_message_is_on_redis_before_the_last_row_is_committed(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, between: Any, redis_url: str
) -> None:
    """Invariant I2 chunk by chunk: every message names only committed rows, and the first one
    is on the broker while the rest of the job is still to be written."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    seen: list[tuple[int, int, set[str]]] = []  # (messages on Redis, rows committed, ids)

    def look(_n: int) -> None:
        sent = _messages(client, f"{queue}.m")
        seen.append((len(sent), len(_items(session_factory)), {i for m in sent for i in m}))
        job = _job(session_factory)
        assert job.submit_lease_expires_at is not None and job.status not in TERMINAL_JOB_STATES

    between(look)
    result = _submit(session_factory, blobs, tmp_path / "c", CeleryPublisher(redis_url, queue))
    assert result.complete and result.dispatched and result.item_count == _INPUTS
    first_messages, rows_then, ids_then = seen[0]
    assert first_messages == 1 and rows_then == _CHUNKS[0] < _INPUTS
    committed = [i.id for i in _items(session_factory)]
    assert ids_then == set(committed[: _CHUNKS[0]])  # only rows already committed
    assert [(m, r) for m, r, _ in seen] == [(1, 2), (3, 6), (5, 10)]
    sent = _messages(client, f"{queue}.m")
    assert [i for m in sent for i in m] == committed  # each item once, in order
    assert _job(session_factory).submit_lease_expires_at is None  # the last chunk cleared it
    client.delete(f"{queue}.m")


def _messages(client: Any, key: str) -> list[list[str]]:
    out = []
    for raw in reversed(client.lrange(key, 0, -1)):  # kombu pushes on the left
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(kwargs["item_ids"])
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
    finish, and no later chunk is written; the job ends cancelled with every item terminal."""
    publisher = ListPublisher()

    def cancel_with_one_running(n: int) -> None:
        if n == 1:
            claimed = claim_items(
                session_factory, publisher.item_ids[:1], worker="w", lease_seconds=60
            )
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
    assert claim_items(session_factory, publisher.item_ids, worker="w", lease_seconds=60) == []


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
    stamped dispatched, and the sweeper publishes them all."""
    dead = CeleryPublisher(f"redis://127.0.0.1:{free_port()}/0", "q")
    result = _submit(session_factory, blobs, tmp_path / "c", dead)
    assert result.complete and not result.dispatched and result.item_count == _INPUTS
    assert {i.dispatched_at for i in _items(session_factory)} == {None}
    assert _sweep(session_factory).republished == _INPUTS
