"""The edges of a worker's transitions, on SQLite and PostgreSQL: a claim retried after it
committed, a lease kept by its heartbeat through every slow step, a record retried after its
COMMIT's reply was lost, and the one-process runner's sweep keeping to its own job.

Each fault is forced at a named point of ``jobs/hooks.py``, never hoped for: one side is held at
a real point (a real lock held in a real transaction, or a real commit just made) while the
other acts. Each test names the invariant of docs/design.md it checks (invariant I3 is
docs/design.md#I3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from jobs.db import Item, Job, SessionFactory, make_engine, make_session_factory, utcnow
from jobs.hooks import pause_at
from jobs.lifecycle import claim_items, expire_leases, undo_dispatch
from jobs.lifecycle.common import ClaimedItem
from jobs.outcome import ItemOutcome, Outcome
from jobs.states import ItemStatus, JobStatus
from jobs.submit.request import SubmitRequest
from jobs.sweeper import SweepReport, sweep
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import ListPublisher, make_resources, submit_captions, write_images
from workers.local import run_job_locally
from workers.pipeline import process_batch, record_with_retry


def _first_time(action: Callable[[], None]) -> Callable[[], None]:
    """A hook that acts the first time its point is reached (a retry passes it again)."""
    done = threading.Event()

    def hook() -> None:
        if not done.is_set():
            done.set()
            action()

    return hook


def _lose_the_reply() -> None:
    """What a worker sees when the server committed but its reply never arrived: a dropped
    connection, which ``is_retryable`` calls worth another try."""
    raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _job_status(sf: SessionFactory, job_id: str) -> str:
    with sf() as session:
        return str(session.scalar(select(Job.status).where(Job.id == job_id)))


def _with_short_lock_waits(db_url: str) -> SessionFactory:
    """The worker's database with lock waits short enough for a test: what a lock timeout does
    after 10 s in a deployment it does here after half a second."""
    return make_session_factory(
        make_engine(db_url, lock_timeout_seconds=0.5, sqlite_busy_seconds=0.5)
    )


# --- 1: a claim retried after it committed ---------------------------------------------------


def test_a_claim_retried_after_starting_its_job_timed_out_keeps_what_it_claimed(
    db_url: str, session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I3 (docs/design.md#I3): the claim commits, then starting the job waits for the
    job row that a big cancel (here: a transaction that updates the job row) holds, and times
    out. The retry must return the items the first try holds, under the same lease token; it
    used to claim again under a new token, get nothing, and leave the batch ``running`` until
    its lease ran out, an attempt spent."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=2)
    res = make_resources(_with_short_lock_waits(db_url), blobs, FakeEngine())
    held, retrying = threading.Event(), threading.Event()

    def hold_the_job_row() -> None:
        with session_factory.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=Job.status))
            held.set()
            assert retrying.wait(60), "the claim never retried"

    holder = threading.Thread(target=hold_the_job_row)

    def after_the_claim_committed() -> None:
        holder.start()
        assert held.wait(30)

    with (
        pause_at("claim:committed", _first_time(after_the_claim_committed)),
        pause_at("claim:retrying", retrying.set),
    ):
        report = process_batch(ids, res)
    holder.join(30)

    assert retrying.is_set(), "starting the job never timed out: the fault was not met"
    assert (report.claimed, report.succeeded) == (2, 2)
    rows = _items(session_factory, job_id)
    assert [(r.status, r.attempts) for r in rows] == [(ItemStatus.succeeded, 1)] * 2
    assert _job_status(session_factory, job_id) == JobStatus.completed


def test_a_claim_whose_commit_reply_was_lost_is_retried_under_the_same_token(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I3: the claim's COMMIT went through but its reply was lost (a dropped
    connection). The retry finds the items the lost reply's claim holds, and runs them."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=3)
    res = make_resources(session_factory, blobs, FakeEngine())

    with pause_at("claim:committed", _first_time(_lose_the_reply)):
        report = process_batch(ids, res)

    assert (report.claimed, report.succeeded) == (3, 3)
    rows = _items(session_factory, job_id)
    assert [(r.status, r.attempts) for r in rows] == [(ItemStatus.succeeded, 1)] * 3
    assert _job_status(session_factory, job_id) == JobStatus.completed


# --- 2: every lease is kept by its heartbeat while its work runs -------------------------------


def _sweep_for(sf: SessionFactory, seconds: float) -> list[SweepReport]:
    """The sweeper, passing every half second for ``seconds`` (real time: leases run out)."""
    reports = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reports.append(sweep(sf, ListPublisher(), max_attempts=3, batch_size=8))
        time.sleep(0.5)
    return reports


def test_a_claim_slow_to_start_its_job_keeps_its_lease_past_the_lease_length(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I4 and I5: the heartbeat runs from the claim on, not from when the batch
    starts to run. Here the worker is held between its claim and its job's start for longer
    than the lease (as when starting the job waits out lock timeouts) while the sweeper passes;
    the sweeper must not take the batch back from the live worker, and it must succeed on its
    first attempt. Before, the lease was renewed only once the claim had returned."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=2)
    res = make_resources(session_factory, blobs, FakeEngine(), lease_seconds=5)
    reports: list[SweepReport] = []

    def slow_start() -> None:
        reports.extend(_sweep_for(session_factory, 7.0))

    with pause_at("claim:committed", _first_time(slow_start)):
        report = process_batch(ids, res)

    assert len(reports) >= 10 and sum(r.requeued for r in reports) == 0
    assert (report.claimed, report.succeeded) == (2, 2)
    rows = _items(session_factory, job_id)
    assert [(r.status, r.attempts) for r in rows] == [(ItemStatus.succeeded, 1)] * 2


def test_a_generation_longer_than_the_lease_keeps_it_while_the_worker_is_alive(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I4 and I5: a heartbeat on a timer, not at the end of a step, renews the lease
    while one generate call runs longer than the whole lease."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=2)
    res = make_resources(session_factory, blobs, FakeEngine(delay_s=7.0), lease_seconds=5)
    reports: list[SweepReport] = []
    sweeper = threading.Thread(target=lambda: reports.extend(_sweep_for(session_factory, 8.0)))
    sweeper.start()
    try:
        report = process_batch(ids, res)
    finally:
        sweeper.join(30)

    assert sum(r.requeued for r in reports) == 0
    assert (report.claimed, report.succeeded) == (2, 2)
    rows = _items(session_factory, job_id)
    assert [(r.status, r.attempts) for r in rows] == [(ItemStatus.succeeded, 1)] * 2


# --- a record retried after it committed ---------------------------------------------------


def test_a_record_whose_commit_reply_was_lost_writes_once_and_finalises_the_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I4 and I5: the record committed, its reply was lost, the worker retried. The
    retry writes nothing more (every row is fenced by its token and ``running``), and the job
    the first try finished is finalised at once, not left ``in_progress`` for the sweeper."""
    job_id, ids = submit_captions(session_factory, blobs, tmp_path, n=2)
    res = make_resources(session_factory, blobs, FakeEngine())
    claimed: list[ClaimedItem] = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    outcomes = [
        ItemOutcome(c.id, c.lease_token, Outcome(text=f"caption {c.id}", tokens_out=2))
        for c in claimed
    ]

    with pause_at("record:committed", _first_time(_lose_the_reply)):
        record_with_retry(res, outcomes, deadline=time.monotonic() + 30)

    rows = _items(session_factory, job_id)
    assert [(r.status, r.result_text) for r in rows] == [
        (ItemStatus.succeeded, f"caption {r.id}") for r in rows
    ]
    assert _job_status(session_factory, job_id) == JobStatus.completed


# --- 3: the one-process runner's sweep keeps to its own job ----------------------------------


def test_a_local_run_leaves_other_jobs_dispatch_and_leases_alone(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I1 and I2: a queued item's dispatch stamp is the right to publish it, and the
    sweeper that stamps it must send it. ``run``'s sweep publishes into its own in-memory queue,
    which delivers only its own job's messages, so it must take no other job's items: it used
    to stamp every open job's queued items of every model and send none of them, so their own
    sweeper then waited ``LLAVA_BATCH_REDISPATCH_AFTER_SECONDS`` after every pass. Another
    job's expired lease is its own sweeper's to take back, too."""
    other_id, other_ids = submit_captions(
        session_factory, blobs, tmp_path / "other", n=3, model="llava-hf/llava-1.5-7b-hf"
    )
    # One message of the other job did not go out (its publish failed): no stamp.
    with session_factory() as session:
        stamp = session.scalar(select(Item.dispatched_at).where(Item.id == other_ids[0]))
    assert stamp is not None
    undo_dispatch(session_factory, other_ids[:1], stamp=stamp)
    # Another item of it was claimed by a worker whose lease has run out.
    start = utcnow() - timedelta(minutes=5)
    claim_items(session_factory, other_ids[2:], worker="gone", lease_seconds=60, now=start)
    before = _dispatch_state(session_factory, other_id)

    write_images(tmp_path / "mine", 3)
    res = make_resources(session_factory, blobs, FakeEngine())
    request = SubmitRequest.of("caption", [str(tmp_path / "mine")], "fake", batch_size=2)
    mine = run_job_locally(request, res, max_prompt_chars=1000)

    assert _job_status(session_factory, mine.job_id) == JobStatus.completed
    assert _dispatch_state(session_factory, other_id) == before
    assert [s for s, _, _ in before] == [ItemStatus.queued, ItemStatus.queued, ItemStatus.running]
    # What the run left alone is there for the other job's own sweeper to repair.
    assert expire_leases(session_factory, max_attempts=3).requeued == 1


def _dispatch_state(
    sf: SessionFactory, job_id: str
) -> list[tuple[str, datetime | None, datetime | None]]:
    return [(r.status, r.dispatched_at, r.lease_expires_at) for r in _items(sf, job_id)]
