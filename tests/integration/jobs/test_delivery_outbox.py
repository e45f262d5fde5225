"""The deliveries outbox (jobs.delivery) on SQLite and PostgreSQL: what a job's end must send
is written with the end itself, taken by one sweeper at a time, retried on the Standard
Webhooks schedule and given up after 24 hours."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from jobs.db import Delivery, DeliveryAttempt, Item, Job, SessionFactory, utcnow
from jobs.delivery import RETRY_DELAYS, Attempt, DeliveryTask, deliver_due, next_attempt
from jobs.delivery.outbox import GIVE_UP_AFTER
from jobs.lifecycle import cancel_job, claim_items, finalise_jobs, record_results
from jobs.states import ItemStatus, JobStatus
from storage import Blobs
from tests.helpers import caption_outcome, submit_captions
from tests.interleaving import Interleaving


def _ended_job(
    sf: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    *,
    notify_url: str | None = "https://hooks.example.com/h",
    output_uri: str | None = "s3://out/prefix/",
) -> str:
    job_id, ids = submit_captions(sf, blobs, tmp_path, n=2)
    with sf.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(notify_url=notify_url, output_uri=output_uri, output_format="jsonl")
        )
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60)
    record_results(sf, [caption_outcome(c.id, c.lease_token) for c in claimed])
    finalise_jobs(sf, [job_id])
    return job_id


def _deliveries(sf: SessionFactory, job_id: str) -> list[Delivery]:
    with sf() as session:
        return list(
            session.scalars(
                select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.what)
            )
        )


def _attempts(sf: SessionFactory, delivery_id: str) -> list[DeliveryAttempt]:
    with sf() as session:
        return list(
            session.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.delivery_id == delivery_id)
                .order_by(DeliveryAttempt.id)
            )
        )


def test_a_job_ends_with_its_deliveries_queued(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The end of a job and what it must send are one transaction: both or neither."""
    job_id = _ended_job(session_factory, blobs, tmp_path)
    rows = _deliveries(session_factory, job_id)
    assert [(d.what, d.target, d.job_status, d.status) for d in rows] == [
        ("output", "s3://out/prefix/", "completed", "pending"),
        ("webhook", "https://hooks.example.com/h", "completed", "pending"),
    ]
    quiet = _ended_job(session_factory, blobs, tmp_path / "q", notify_url=None, output_uri=None)
    assert _deliveries(session_factory, quiet) == []


def test_a_job_whose_deliveries_cannot_be_written_does_not_end(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: no ended job without its deliveries. A failure writing them rolls the end
    back, and the next finalise ends the job with them."""
    import jobs.lifecycle.finalise as finalise

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(finalise, "queue_deliveries", broken)
    with pytest.raises(RuntimeError):
        _ended_job(session_factory, blobs, tmp_path)
    with session_factory() as session:
        job_id, status = session.execute(select(Job.id, Job.status)).one()
    assert status == JobStatus.in_progress
    monkeypatch.undo()
    assert finalise_jobs(session_factory, [job_id]) == 1
    assert len(_deliveries(session_factory, job_id)) == 2


def test_a_cancelled_job_sends_its_end_too(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = submit_captions(session_factory, blobs, tmp_path, n=2)
    with session_factory.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(notify_url="https://h.example.com/")
        )
    cancel_job(session_factory, job_id)
    finalise_jobs(session_factory, [job_id])
    (row,) = _deliveries(session_factory, job_id)
    assert (row.what, row.job_status) == ("webhook", JobStatus.cancelled)


class Flaky:
    """Fails ``failures`` times, then delivers."""

    def __init__(self, failures: int, *, retry: bool = True) -> None:
        self.failures = failures
        self.retry = retry
        self.tasks: list[DeliveryTask] = []

    def __call__(self, task: DeliveryTask) -> Attempt:
        self.tasks.append(task)
        if len(self.tasks) <= self.failures:
            return Attempt(ok=False, status_code=500, detail="HTTP 500", retry=self.retry)
        return Attempt(ok=True, status_code=200, detail="HTTP 200", result={"at": "x"})


def test_a_failed_delivery_is_retried_on_the_schedule_until_delivered(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended_job(session_factory, blobs, tmp_path, output_uri=None)
    (row,) = _deliveries(session_factory, job_id)
    hook = Flaky(2)
    start = utcnow()
    clock = [start]
    handlers = {"webhook": hook}

    def due(at: datetime) -> int:
        clock[0] = at
        return deliver_due(session_factory, handlers, now=at, clock=lambda: clock[0])

    assert due(start) == 0  # 500
    assert due(start + RETRY_DELAYS[0] - timedelta(seconds=1)) == 0  # not due yet: not tried
    assert len(hook.tasks) == 1
    assert due(start + RETRY_DELAYS[0]) == 0  # 500 again
    second = start + RETRY_DELAYS[0]
    assert due(second + RETRY_DELAYS[1]) == 1  # 200
    assert [t.attempt for t in hook.tasks] == [1, 2, 3]
    assert {t.id for t in hook.tasks} == {row.id}  # the same delivery id every time
    (done,) = _deliveries(session_factory, job_id)
    assert (done.status, done.attempts, done.result, done.last_error) == (
        "delivered",
        3,
        {"at": "x"},
        None,
    )
    tries = _attempts(session_factory, row.id)
    assert [(a.ok, a.status_code) for a in tries] == [(False, 500), (False, 500), (True, 200)]
    assert due(second + timedelta(days=2)) == 0 and len(hook.tasks) == 3  # never again


def test_a_delivery_is_given_up_after_24_hours(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended_job(session_factory, blobs, tmp_path, output_uri=None)
    (row,) = _deliveries(session_factory, job_id)
    hook = Flaky(1000)
    at = row.next_attempt_at
    tries = 0
    while True:
        deliver_due(session_factory, {"webhook": hook}, now=at, clock=lambda at=at: at)
        tries += 1
        (row,) = _deliveries(session_factory, job_id)
        if row.status != "pending":
            break
        at = row.next_attempt_at
        assert tries < 20
    assert row.status == "abandoned"
    assert row.finished_at == row.created_at + GIVE_UP_AFTER  # the last try: at 24 h, not later
    # 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h after each, then the 24 h mark.
    assert tries == 8 == len(hook.tasks)
    assert row.last_error == "HTTP 500"


def test_a_delivery_that_cannot_succeed_is_given_up_at_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended_job(session_factory, blobs, tmp_path, output_uri=None)
    deliver_due(session_factory, {"webhook": Flaky(1, retry=False)})
    (row,) = _deliveries(session_factory, job_id)
    assert (row.status, row.attempts) == ("abandoned", 1)


def test_a_handler_that_raises_is_a_failed_try_and_the_others_go_on(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended_job(session_factory, blobs, tmp_path)

    def boom(task: DeliveryTask) -> Attempt:
        raise ValueError("bug")

    assert deliver_due(session_factory, {"webhook": boom, "output": Flaky(0)}) == 1
    by_what = {d.what: d for d in _deliveries(session_factory, job_id)}
    assert by_what["output"].status == "delivered"
    assert (by_what["webhook"].status, by_what["webhook"].last_error) == (
        "pending",
        "ValueError: bug",
    )


def test_two_sweepers_never_send_the_same_try(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant: one delivery is in one sweeper's hands at a time. The second sweeper runs
    while the first holds the row (paused between taking it and sending): it sends nothing."""
    job_id = _ended_job(session_factory, blobs, tmp_path, output_uri=None)
    first, second = Flaky(0), Flaky(0)
    now = utcnow()
    race = Interleaving("delivery:taken")
    sent_first, sent_second = race.run(
        lambda: deliver_due(session_factory, {"webhook": first}, now=now),
        lambda: deliver_due(session_factory, {"webhook": second}, now=now),
    )
    assert (sent_first, sent_second) == (1, 0)
    assert (len(first.tasks), len(second.tasks)) == (1, 0)
    (row,) = _deliveries(session_factory, job_id)
    assert (row.status, row.attempts) == ("delivered", 1)


def test_a_sweeper_that_died_holding_a_delivery_is_replaced_after_the_lease(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """At least once: a try never recorded (its sweeper died) is tried again, with the same
    delivery id, once its lease has run out; the dead try's late record changes nothing."""
    from jobs.delivery.outbox import LEASE, _take

    job_id = _ended_job(session_factory, blobs, tmp_path, output_uri=None)
    (row,) = _deliveries(session_factory, job_id)
    now = utcnow()
    dead = _take(session_factory, row.id, now)
    assert dead is not None
    hook = Flaky(0)
    assert deliver_due(session_factory, {"webhook": hook}, now=now + LEASE / 2) == 0
    assert deliver_due(session_factory, {"webhook": hook}, now=now + LEASE) == 1
    assert hook.tasks[0].id == dead.id and hook.tasks[0].attempt == 2
    from jobs.delivery.outbox import _record

    assert _record(session_factory, dead, Attempt(ok=False, detail="late"), now + LEASE) == 0
    (row,) = _deliveries(session_factory, job_id)
    assert (row.status, row.attempts) == ("delivered", 2)


def test_a_deleted_job_takes_its_deliveries_with_it(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    from jobs.retention.purge import delete_jobs

    job_id = _ended_job(session_factory, blobs, tmp_path)
    delete_jobs(session_factory, blobs, [job_id], batch=100)
    with session_factory() as session:
        assert session.scalars(select(Delivery.id)).all() == []
        assert session.scalar(select(Item.id).where(Item.status == ItemStatus.succeeded)) is None


def test_the_retry_schedule_is_standard_webhooks() -> None:
    start = datetime(2026, 1, 1)
    at, seen = start, []
    for attempts in range(1, 20):
        retry_at = next_attempt(start, attempts, at)
        if retry_at is None:
            break
        seen.append(retry_at - at)
        at = retry_at
    assert seen[:6] == list(RETRY_DELAYS)
    assert at == start + GIVE_UP_AFTER
