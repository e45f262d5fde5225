"""Leases, fencing, the sweeper, cancel and retry — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import QUEUE_EMPTY, CallbackPublisher
from jobs.errors import RequestError
from jobs.lifecycle import (
    ItemOutcome,
    cancel_job,
    claim_items,
    claim_next,
    record_results,
    requeue_failed,
)
from jobs.outcome import Outcome
from jobs.states import JobStatus
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, queued_ids, statuses, submit_captions, write_images
from tests.helpers import caption_outcome as _ok

_submit = submit_captions


def test_late_write_of_a_worker_that_lost_its_lease_is_refused(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=1)
    start = utcnow()
    (first,) = claim_items(session_factory, ids, worker="A", lease_seconds=10, now=start)
    report = sweep(
        session_factory,
        ListPublisher(),
        max_attempts=3,
        batch_size=8,
        now=start + timedelta(seconds=11),
    )
    assert report.requeued == 1
    (second,) = claim_items(session_factory, ids, worker="B", lease_seconds=10)
    assert second.lease_token != first.lease_token and second.attempts == 2
    assert record_results(session_factory, [_ok(first.id, first.lease_token)]) == 0
    assert record_results(session_factory, [_ok(second.id, second.lease_token)]) == 1
    with session_factory() as session:
        item = session.get(Item, ids[0])
        assert item is not None and item.worker == "B" and item.status == "succeeded"
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.completed


def test_item_that_keeps_losing_its_worker_ends_failed_worker_lost(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=1)
    now = utcnow()
    for attempt in range(1, 4):
        claimed = claim_items(session_factory, ids, worker="w", lease_seconds=5, now=now)
        assert [c.attempts for c in claimed] == [attempt]
        now += timedelta(seconds=6)
        sweep(session_factory, ListPublisher(), max_attempts=3, batch_size=8, now=now)
    with session_factory() as session:
        item = session.get(Item, ids[0])
        job = session.get(Job, job_id)
    assert item is not None and item.status == "failed" and item.error_code == "worker_lost"
    assert job is not None and job.status == JobStatus.failed
    assert claim_items(session_factory, ids, worker="w", lease_seconds=5) == []


def test_sweeper_republishes_by_age_behind_the_oldest_waiting_message(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Lost messages are found under steady load too. An item that lost a worker is sent by
    name, alone (docs/design.md#I11): one dispatched before the oldest message still waiting
    (FIFO) was delivered, so if it is still queued its message is lost and it is sent again.
    Such an item is never taken by a doorbell: only its own message runs it."""
    _, ids = _submit(session_factory, blobs, tmp_path, n=3)
    start = utcnow()
    claim_items(session_factory, ids, worker="lost", lease_seconds=10, now=start)
    sent_at = start + timedelta(seconds=11)
    first = ListPublisher(oldest=QUEUE_EMPTY)
    report = sweep(session_factory, first, max_attempts=3, batch_size=2, now=sent_at)
    assert (report.requeued, report.republished) == (3, 3)  # no message: sent at once
    assert sorted(first.batches) == sorted([i] for i in ids)  # each alone
    assert first.rings == []  # nothing a doorbell may claim
    later = sent_at + timedelta(minutes=10)
    behind = ListPublisher(oldest=sent_at - timedelta(minutes=1))  # ours may still wait
    sweep(session_factory, behind, max_attempts=3, batch_size=2, now=later)
    assert behind.batches == []
    busy = ListPublisher(oldest=later - timedelta(seconds=30))  # the queue moved past ours
    sweep(session_factory, busy, max_attempts=3, batch_size=2, now=later)
    assert sorted(busy.batches) == sorted([i] for i in ids)
    assert busy.stamps == [later, later, later]
    again = ListPublisher(oldest=QUEUE_EMPTY)
    sweep(session_factory, again, max_attempts=3, batch_size=2, now=later + timedelta(seconds=1))
    assert again.batches == []  # just re-dispatched: not stale yet
    unknown = ListPublisher(oldest=None)  # a broker that cannot be asked: age alone
    sweep(session_factory, unknown, max_attempts=3, batch_size=2, now=later + timedelta(hours=1))
    assert sorted(unknown.item_ids) == sorted(ids)
    assert unknown.rings == []
    assert claim_next(session_factory, worker="w", lease_seconds=60) == []


def test_undispatched_items_are_published_by_the_sweeper_at_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Items whose doorbell never went out (the broker was down at submit) are rung for by the
    next sweep, not ``redispatch_after`` later: the model's queue is topped up to its limit
    counting what already waits there, or, where that cannot be asked, rung for because no job
    of the model has had a turn. The next doorbell claims them."""
    write_images(tmp_path / "c", 2)

    def broker_down(_job: str | None, _ids: list[str]) -> None:
        from jobs.dispatch import DispatchError

        raise DispatchError("down")

    result = submit_job(
        SubmitRequest.of(
            kind="caption",
            sources=[str(tmp_path / "c")],
            model="fake",
            max_new_tokens=8,
            batch_size=8,
        ),
        session_factory=session_factory,
        blobs=blobs,
        publisher=CallbackPublisher(broker_down),
        max_prompt_chars=1000,
    )
    assert not result.dispatched
    assert statuses(session_factory, result.job_id) == ["queued", "queued"]
    assert _dispatch_stamps(session_factory, result.job_id) == [None, None]
    now = utcnow()
    unknown = ListPublisher(waiting_count=None, bell_limit=4)  # no job of it had a turn
    report = sweep(session_factory, unknown, max_attempts=3, batch_size=8, now=now)
    assert report.rung == 4 and unknown.rings == [("fake", None)] * 4 and unknown.batches == []
    assert _dispatch_stamps(session_factory, result.job_id) == [now, now]
    busy = ListPublisher(waiting_count=1, bell_limit=4)  # one doorbell still waits
    sweep(session_factory, busy, max_attempts=3, batch_size=8, now=now)
    assert busy.rings == [("fake", None)] * 3
    ids = queued_ids(session_factory, result.job_id)
    claimed = claim_next(session_factory, worker="w", lease_seconds=60, now=now)
    assert [c.id for c in claimed] == ids


def _dispatch_stamps(sf: SessionFactory, job_id: str) -> list[datetime | None]:
    with sf() as session:
        return list(
            session.scalars(
                select(Item.dispatched_at).where(Item.job_id == job_id).order_by(Item.seq)
            )
        )


def test_cancel_keeps_finished_results_and_cancels_the_rest(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=4)
    running = claim_items(session_factory, ids[:2], worker="w", lease_seconds=60)
    record_results(session_factory, [_ok(running[0].id, running[0].lease_token)])
    assert cancel_job(session_factory, job_id) == JobStatus.cancelling
    assert claim_items(session_factory, ids[2:], worker="w", lease_seconds=60) == []
    record_results(session_factory, [_ok(running[1].id, running[1].lease_token)])
    assert statuses(session_factory, job_id) == ["succeeded", "succeeded", "cancelled", "cancelled"]
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert job is not None and job.status == JobStatus.cancelled


def test_retry_requeues_only_failed_items(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _submit(session_factory, blobs, tmp_path, n=3)
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60)
    record_results(
        session_factory,
        [
            _ok(claimed[0].id, claimed[0].lease_token),
            ItemOutcome(
                claimed[1].id,
                claimed[1].lease_token,
                Outcome(error_code="image_decode_error", error_message="bad"),
            ),
            _ok(claimed[2].id, claimed[2].lease_token),
        ],
    )
    assert requeue_failed(session_factory, job_id) == [claimed[1].id]
    assert statuses(session_factory, job_id) == ["succeeded", "queued", "succeeded"]
    with session_factory() as session:
        item = session.get(Item, claimed[1].id)
        job = session.get(Job, job_id)
    assert item is not None and item.error_code is None and item.attempts == 0
    assert job is not None and job.status == JobStatus.in_progress


def test_idempotency_key_returns_the_same_job_and_refuses_other_parameters(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = _submit(session_factory, blobs, tmp_path, n=2, idempotency_key="k1")
    again, _ = _submit(session_factory, blobs, tmp_path, n=2, idempotency_key="k1")
    assert again == job_id
    with pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, tmp_path, n=2, idempotency_key="k1", prompt="other")
    assert refused.value.code == "idempotency_conflict"
    with session_factory() as session:
        assert len(list(session.scalars(select(Job.id)))) == 1


def test_concurrent_claims_never_share_an_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    _, ids = _submit(session_factory, blobs, tmp_path, n=24)
    results: dict[str, list[str]] = {}

    def claim(name: str) -> None:
        got: list[str] = []
        for _ in range(6):
            got += [c.id for c in claim_items(session_factory, ids, worker=name, lease_seconds=60)]
        results[name] = got

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for got in results.values() for i in got]
    assert sorted(claimed) == sorted(ids)  # each item exactly once
