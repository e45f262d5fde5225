"""Every transition against what runs beside it, on SQLite and PostgreSQL.

Each race is forced, not hoped for: a hook pauses one side at a real point (inside its real
transaction, holding its real locks) and the other side runs in that window; it either commits
there or blocks on the first side's locks until the first side goes on. Each test names the
invariant of docs/design.md it checks (invariant I5 is docs/design.md#I5).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from jobs.db import (
    Item,
    ItemPage,
    Job,
    SessionFactory,
    is_retryable,
    make_engine,
    make_session_factory,
    utcnow,
)
from jobs.dispatch import QUEUE_EMPTY
from jobs.lifecycle import (
    ClaimedItem,
    ItemOutcome,
    cancel_job,
    claim_items,
    claim_next,
    expire_leases,
    finalise_jobs,
    record_results,
    release_items,
    requeue_failed,
)
from jobs.outcome import Outcome
from jobs.states import ItemStatus, JobStatus
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, statuses, submit_captions
from tests.interleaving import Interleaving

_submit = submit_captions


def _ok(item: ClaimedItem, text: str = "a caption") -> ItemOutcome:
    return ItemOutcome(item.id, item.lease_token, Outcome(text=text, tokens_out=2))


def _bad(item: ClaimedItem) -> ItemOutcome:
    return ItemOutcome(
        item.id, item.lease_token, Outcome(error_code="image_decode_error", error_message="x")
    )


def _job_status(sf: SessionFactory, job_id: str) -> str:
    with sf() as session:
        return str(session.scalar(select(Job.status).where(Job.id == job_id)))


def _reopen(sf: SessionFactory, job_id: str) -> None:
    """Puts a finished job back to in_progress: "its last record committed, the finaliser has
    not run yet"."""
    with sf.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.in_progress, finished_at=None)
        )


# --- 1: a claim never drops rows a producer or sweeper holds ----------------------------------


def test_claim_waits_for_rows_a_sweeper_is_stamping_and_takes_them_all(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I3: a message's items are claimed, not skipped because someone else held their
    rows for an instant (the first-batch drop). The sweeper stamps items that lost a worker
    before it sends each by name; a claim naming them meanwhile waits, then takes them all."""
    _, ids = _submit(session_factory, blobs, tmp_path, n=4)
    start = utcnow()
    claim_items(session_factory, ids, worker="dead", lease_seconds=10, now=start)
    later = start + timedelta(minutes=10)  # their lease ran out long ago: no message
    race = Interleaving("republish:stamped")
    report, claimed = race.run(
        lambda: sweep(
            session_factory,
            ListPublisher(oldest=QUEUE_EMPTY),
            max_attempts=3,
            batch_size=8,
            now=later,
        ),
        lambda: claim_items(session_factory, ids, worker="w", lease_seconds=60),
    )
    assert (report.requeued, report.republished) == (4, 4)
    assert sorted(c.id for c in claimed) == sorted(ids)
    assert [c.attempts for c in claimed] == [2, 2, 2, 2]


def test_a_doorbell_waits_for_rows_a_sweeper_is_stamping_and_takes_them_all(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I3 for a doorbell: items whose doorbell never went out are stamped by the
    sweeper once it has rung for them; a doorbell claiming meanwhile (one it just rang) waits
    for those rows and takes its batch, rather than skipping them and claiming nothing."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=4)
    with session_factory.begin() as session:  # the broker was down: the stamps were undone
        session.execute(update(Item).where(Item.job_id == job_id).values(dispatched_at=None))
    bell = ListPublisher(oldest=QUEUE_EMPTY, waiting_count=0, bell_limit=1)
    race = Interleaving("ring:stamped")
    report, claimed = race.run(
        lambda: sweep(session_factory, bell, max_attempts=3, batch_size=8),
        lambda: claim_next(session_factory, worker="w", lease_seconds=60),
    )
    assert report.rung == 1 and bell.rings == [("fake", None)]
    assert [c.id for c in claimed] == ids


# --- 2: cancel + a lost or handed-back batch -------------------------------------------------


def test_items_whose_worker_died_in_a_cancelled_job_end_cancelled(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5: every item ends terminal and a cancelled job finalises, even when its
    running batch's worker is kill -9ed after the cancel."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    start = utcnow()
    claim_items(session_factory, ids, worker="w", lease_seconds=10, now=start)
    assert cancel_job(session_factory, job_id) == JobStatus.cancelling
    report = sweep(
        session_factory,
        ListPublisher(),
        max_attempts=3,
        batch_size=8,
        now=start + timedelta(seconds=11),
    )
    assert report.cancelled == 2 and report.requeued == 0
    assert statuses(session_factory, job_id) == ["cancelled", "cancelled"]
    assert _job_status(session_factory, job_id) == JobStatus.cancelled


def test_items_handed_back_in_a_cancelled_job_end_cancelled_even_mid_cancel(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5: a hand-back (storage error) racing the cancel still ends cancelled."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    Interleaving("cancel:marked").run(
        lambda: cancel_job(session_factory, job_id),
        lambda: release_items(session_factory, claimed),
    )
    sweep(session_factory, ListPublisher(), max_attempts=3, batch_size=8)
    assert statuses(session_factory, job_id) == ["cancelled", "cancelled"]
    assert _job_status(session_factory, job_id) == JobStatus.cancelled


# --- 5: retry / cancel vs the finaliser ------------------------------------------------------


def test_retry_racing_the_finaliser_never_leaves_a_finished_job_with_queued_items(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5: a finished job has no queued item; retried items run."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    a, b = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    record_results(session_factory, [_ok(a), _bad(b)])
    _reopen(session_factory, job_id)
    _, requeued = Interleaving("finalise:locked").run(
        lambda: finalise_jobs(session_factory, [job_id]),
        lambda: requeue_failed(session_factory, job_id),
    )
    assert requeued == [b.id]
    assert statuses(session_factory, job_id) == ["succeeded", "queued"]
    assert _job_status(session_factory, job_id) == JobStatus.in_progress


def test_cancel_racing_the_finaliser_reports_the_status_the_job_ends_in(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    record_results(session_factory, [_ok(c) for c in claimed])
    _reopen(session_factory, job_id)
    _, said = Interleaving("finalise:locked").run(
        lambda: finalise_jobs(session_factory, [job_id]),
        lambda: cancel_job(session_factory, job_id),
    )
    assert said == _job_status(session_factory, job_id)
    assert said in (JobStatus.completed, JobStatus.cancelled)


# --- 6: no read-then-write: the sweeper, retry and cancel are compare-and-set ----------------


def test_the_sweeper_never_overwrites_a_result_recorded_in_its_window(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I4 and I5: at most one result, never a succeeded item sent back."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=1)
    start = utcnow()
    (item,) = claim_items(session_factory, ids, worker="w", lease_seconds=10, now=start)
    expired, written = Interleaving("expire:begin").run(
        lambda: expire_leases(session_factory, max_attempts=1, now=start + timedelta(seconds=11)),
        lambda: record_results(session_factory, [_ok(item)]),
    )
    assert written == 1 and expired.requeued == expired.failed_worker_lost == 0
    with session_factory() as session:
        row = session.get(Item, item.id)
    assert row is not None and row.status == ItemStatus.succeeded and row.error_code is None
    assert row.result_text == "a caption"
    assert _job_status(session_factory, job_id) == JobStatus.completed


def test_two_retries_at_once_requeue_each_failed_item_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    record_results(session_factory, [_bad(c) for c in claimed])
    first, second = Interleaving("retry:reopened").run(
        lambda: requeue_failed(session_factory, job_id),
        lambda: requeue_failed(session_factory, job_id),
    )
    assert sorted(first + second) == sorted(ids)
    assert [] in (first, second)
    assert statuses(session_factory, job_id) == ["queued", "queued"]


def test_cancel_beside_the_last_record_ends_as_it_says(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A cancel that lands while the last result is being written says ``cancelling`` (running
    items finish) and the job ends ``cancelled``; one after it says ``completed``."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=1)
    (item,) = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    _, said = Interleaving("record:written").run(
        lambda: record_results(session_factory, [_ok(item)]),
        lambda: cancel_job(session_factory, job_id),
    )
    # On SQLite the cancel waits for the record's write lock; when it takes the lock after the
    # record's commit, nothing of the job runs any more and it ends cancelled at once, as said.
    ends = {
        JobStatus.cancelling: JobStatus.cancelled,
        JobStatus.cancelled: JobStatus.cancelled,
        JobStatus.completed: JobStatus.completed,
    }
    assert _job_status(session_factory, job_id) == ends[said]
    assert statuses(session_factory, job_id) == ["succeeded"]
    assert cancel_job(session_factory, job_id) == ends[said]  # a finished job stays as it is


# --- 3, 4: a row that cannot be written fails only its own item --------------------------------


def test_a_failed_document_item_can_be_retried_and_succeed(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5: its earlier pages go with the retry; the new attempt's pages are stored."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    doc, mate = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    page_failed = Outcome(page=1, error_code="output_truncated", error_message="cut")
    record_results(
        session_factory,
        [
            ItemOutcome(
                doc.id,
                doc.lease_token,
                Outcome(error_code="output_truncated", pages=(page_failed,)),
            ),
            _ok(mate),
        ],
    )
    assert requeue_failed(session_factory, job_id) == [doc.id]
    with session_factory() as session:
        assert session.scalars(select(ItemPage).where(ItemPage.item_id == doc.id)).all() == []
    (again,) = claim_items(session_factory, [doc.id], worker="w", lease_seconds=60)
    pages = tuple(Outcome(page=n, text="{}", json={}, tokens_out=1) for n in (1, 2))
    written = record_results(
        session_factory,
        [ItemOutcome(again.id, again.lease_token, Outcome(text="{}", json={}, pages=pages))],
    )
    assert written == 1
    assert statuses(session_factory, job_id) == ["succeeded", "succeeded"]
    with session_factory() as session:
        stored = session.scalars(select(ItemPage.page_number).where(ItemPage.item_id == doc.id))
        assert sorted(stored) == [1, 2]


def test_a_row_the_database_refuses_fails_only_its_own_item_and_nul_is_stripped(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I6: bad output costs its own item, not its batch-mates' results."""
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=3)
    nul, unstorable, fine = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    written = record_results(
        session_factory,
        [
            ItemOutcome(nul.id, nul.lease_token, Outcome(text="a\x00b", json={"k\x00": ["v\x00"]})),
            ItemOutcome(
                unstorable.id, unstorable.lease_token, Outcome(text="x", json={"set": {1, 2}})
            ),
            _ok(fine),
        ],
    )
    assert written == 3
    with session_factory() as session:
        rows = {i.id: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}
    assert rows[nul.id].status == "succeeded" and rows[nul.id].result_text == "ab"
    assert rows[nul.id].result_json == {"k": ["v"]}
    assert rows[unstorable.id].status == "failed"
    assert rows[unstorable.id].error_code == "internal_error"
    assert "could not be stored" in (rows[unstorable.id].error_message or "")
    assert rows[fine.id].status == "succeeded" and rows[fine.id].result_text == "a caption"
    assert _job_status(session_factory, job_id) == JobStatus.completed


# --- 9: transient storage errors back off; two sweepers never double-publish -----------------


def test_transient_storage_errors_back_off_without_spending_attempts(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5 (bounded attempts) without burning them on an outage: with the default
    settings, hand-backs span well over 3 minutes before the worker would give up. A handed-back
    item is neither claimed nor rung for before it is due; once due, the sweeper rings and a
    doorbell claims it with its attempt refunded."""
    from jobs.settings import Settings

    defaults = Settings()
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=1)
    now = utcnow()
    waited = timedelta(0)
    for n in range(defaults.storage_retry_limit):
        (item,) = claim_next(session_factory, worker="w", lease_seconds=60, now=now)
        assert (item.id, item.attempts, item.transient_failures) == (ids[0], 1, n)
        release_items(
            session_factory,
            [item],
            retry_base_seconds=defaults.storage_retry_base_seconds,
            retry_max_seconds=defaults.storage_retry_max_seconds,
            now=now,
        )
        with session_factory() as session:
            due = session.scalar(select(Item.not_before).where(Item.id == item.id))
        assert due is not None and due > now
        # Not before it is due: no claim, no doorbell, no message.
        assert claim_next(session_factory, worker="w", lease_seconds=60, now=now) == []
        assert claim_items(session_factory, ids, worker="w", lease_seconds=60, now=now) == []
        early = ListPublisher(oldest=QUEUE_EMPTY, waiting_count=0)
        sweep(session_factory, early, max_attempts=3, batch_size=8, now=now)
        assert early.batches == [] and early.rings == []
        waited += due - now
        now = due
        due_bell = ListPublisher(oldest=QUEUE_EMPTY, waiting_count=0)
        sweep(session_factory, due_bell, max_attempts=3, batch_size=8, now=now)
        assert due_bell.batches == []  # it lost no worker: a doorbell takes it
        assert due_bell.rings == [("fake", None)] * due_bell.bell_limit
    assert waited > timedelta(minutes=3)
    assert statuses(session_factory, job_id) == ["queued"]


def test_two_sweepers_never_publish_the_same_items(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The stamp is the right to publish: two sweepers at once never send the same item that
    lost a worker (each sent by name), and between them send every one."""
    _, ids = _submit(session_factory, blobs, tmp_path, n=3)
    start = utcnow()
    claim_items(session_factory, ids, worker="dead", lease_seconds=10, now=start)
    expire_leases(session_factory, max_attempts=3, now=start + timedelta(seconds=11))
    later = start + timedelta(minutes=10)
    one, two = ListPublisher(oldest=QUEUE_EMPTY), ListPublisher(oldest=QUEUE_EMPTY)
    Interleaving("republish:stamped").run(
        lambda: sweep(session_factory, one, max_attempts=3, batch_size=8, now=later),
        lambda: sweep(session_factory, two, max_attempts=3, batch_size=8, now=later),
    )
    assert sorted(one.item_ids + two.item_ids) == sorted(ids)
    assert not set(one.item_ids) & set(two.item_ids)


# --- 7: a paused writer does not freeze its job (PostgreSQL) -----------------------------------


def test_a_writer_paused_inside_its_transaction_does_not_freeze_the_job(
    pg_url: str, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I4 keeps results safe; here: no lock of one worker stops the others. PostgreSQL
    only: SQLite has one writer at a time by design (the embedded, one-process default)."""
    from tests.helpers import migrated_session_factory

    migrated_session_factory(pg_url)
    sf = make_session_factory(make_engine(pg_url, idle_in_transaction_seconds=2))
    job_id, ids = _submit(sf, blobs, tmp_path, n=4)
    batch_a = claim_items(sf, ids[:2], worker="A", lease_seconds=60)
    batch_b = claim_items(sf, ids[2:3], worker="B", lease_seconds=60)
    timings: dict[str, float] = {}

    def others() -> None:
        t0 = time.monotonic()
        assert record_results(sf, [_ok(batch_b[0])]) == 1
        timings["record"] = time.monotonic() - t0
        assert requeue_failed(sf, job_id) == []
        assert cancel_job(sf, job_id) == JobStatus.cancelling
        timings["all"] = time.monotonic() - t0

    race = Interleaving("record:written", hold=4.0)  # A pauses past the idle timeout
    with pytest.raises(DBAPIError) as ended:
        race.run(lambda: record_results(sf, [_ok(c) for c in batch_a]), others)
    assert is_retryable(ended.value)
    assert race.second_blocked is False, "another worker waited for the paused one"
    assert timings["all"] < 2.0
    # The server ended A's transaction (locks released); A's retry still holds the lease.
    assert record_results(sf, [_ok(c) for c in batch_a]) == 2
    assert statuses(sf, job_id) == ["succeeded", "succeeded", "succeeded", "cancelled"]
    assert _job_status(sf, job_id) == JobStatus.cancelled


# --- an interrupted run hands back what it holds -----------------------------------------------


def test_an_interrupted_run_hands_back_only_its_own_items_at_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """``run`` stopped by a second Ctrl-C: its running items are queued again at once (the
    attempt refunded, no lease to wait out); another worker's claim is not touched."""
    from jobs.lifecycle import hand_back_claims

    job_id, ids = _submit(session_factory, blobs, tmp_path, n=3)
    claim_items(session_factory, ids[:2], worker="run:1", lease_seconds=600)
    claim_items(session_factory, ids[2:], worker="other:2", lease_seconds=600)
    assert hand_back_claims(session_factory, job_id, worker="run:1") == 2
    with session_factory() as session:
        rows = {i.id: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}
    for item_id in ids[:2]:
        row = rows[item_id]
        assert row.status == ItemStatus.queued and row.attempts == 0
        assert row.lease_token is None and row.dispatched_at is None  # the sweeper sends it
    assert rows[ids[2]].status == ItemStatus.running and rows[ids[2]].attempts == 1
    assert hand_back_claims(session_factory, job_id, worker="run:1") == 0


def test_a_hand_back_in_a_cancelled_job_ends_cancelled(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    from jobs.lifecycle import hand_back_claims

    job_id, ids = _submit(session_factory, blobs, tmp_path, n=2)
    claim_items(session_factory, ids, worker="run:1", lease_seconds=600)
    assert cancel_job(session_factory, job_id) == JobStatus.cancelling
    assert hand_back_claims(session_factory, job_id, worker="run:1") == 2
    assert statuses(session_factory, job_id) == ["cancelled", "cancelled"]
    assert _job_status(session_factory, job_id) == JobStatus.cancelled
