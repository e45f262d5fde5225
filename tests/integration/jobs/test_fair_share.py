"""Sharing the fleet, on SQLite and PostgreSQL: a doorbell's claim takes the next batch of the
next job in priority and turn order; a job past its completion window starts nothing more and
ends ``expired``; and the window's expiry against every transition beside it, each race forced
at a real point (``tests.interleaving``). Each test names the invariant of docs/design.md it
checks (invariant I5 is docs/design.md#I5)."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from jobs.db import Item, Job, SessionFactory, is_retryable, utcnow
from jobs.dispatch import dispatch_items
from jobs.errors import JobsError, RequestError
from jobs.exports import OpenAIWriter
from jobs.fleet import Serving
from jobs.lifecycle import (
    ClaimedItem,
    ItemOutcome,
    cancel_job,
    claim_items,
    claim_next,
    claims,
    expire_windows,
    finalise_jobs,
    record_results,
    requeue_failed,
    set_priority,
)
from jobs.outcome import Outcome
from jobs.states import JobStatus
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import ListPublisher, migrated_session_factory, statuses, submit_captions
from tests.interleaving import Interleaving

WINDOW = 60
FAKE = Serving(model="fake", revision=None, quantization="none")  # what a worker serves


def _job(
    sf: SessionFactory, blobs: Blobs, tmp_path: Path, name: str, n: int, **fields: object
) -> tuple[str, list[str]]:
    fields.setdefault("batch_size", 2)
    return submit_captions(sf, blobs, tmp_path / name, n=n, **fields)


def _next(sf: SessionFactory, *, now: datetime | None = None) -> list[ClaimedItem]:
    return claim_next(sf, worker="w", lease_seconds=60, now=now)


def _order(sf: SessionFactory, claims: int) -> list[str | None]:
    """The job of each of ``claims`` doorbells in a row (None: it found nothing)."""
    taken = [_next(sf) for _ in range(claims)]
    return [batch[0].job_id if batch else None for batch in taken]


def _ok(item: ClaimedItem) -> ItemOutcome:
    return ItemOutcome(item.id, item.lease_token, Outcome(text="a caption", tokens_out=2))


def _job_row(sf: SessionFactory, job_id: str) -> Job:
    with sf() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _expires(sf: SessionFactory, job_id: str) -> datetime:
    expires = _job_row(sf, job_id).expires_at
    assert expires is not None
    return expires


# --- fair share -------------------------------------------------------------------------------


def test_doorbells_alternate_between_jobs_batch_by_batch(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A small job submitted behind a big one gets the very next turn, whatever their sizes
    and submit order: its one batch is not behind the big job's rest."""
    big, _ = _job(session_factory, blobs, tmp_path, "big", 8)
    assert _order(session_factory, 1) == [big]
    small, _ = _job(session_factory, blobs, tmp_path, "small", 2)
    assert _order(session_factory, 5) == [small, big, big, big, None]


def test_two_big_jobs_take_turns(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    first, _ = _job(session_factory, blobs, tmp_path, "first", 6)
    second, _ = _job(session_factory, blobs, tmp_path, "second", 6)
    assert _order(session_factory, 7) == [first, second] * 3 + [None]


def test_a_claim_takes_only_jobs_of_the_model_it_serves(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I10, for a doorbell: it picks among its own model's jobs only."""
    other, _ = _job(session_factory, blobs, tmp_path, "other", 2, model="other-model")
    mine, _ = _job(session_factory, blobs, tmp_path, "mine", 2)
    serving = FAKE
    got = claim_next(session_factory, worker="w", lease_seconds=60, serving=serving)
    assert {c.job_id for c in got} == {mine}
    assert claim_next(session_factory, worker="w", lease_seconds=60, serving=serving) == []
    assert statuses(session_factory, other) == ["queued", "queued"]


# --- priorities -------------------------------------------------------------------------------


def test_a_higher_priority_is_claimed_before_any_lower_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    low, _ = _job(session_factory, blobs, tmp_path, "low", 4)
    assert _order(session_factory, 1) == [low]
    high, _ = _job(session_factory, blobs, tmp_path, "high", 4, priority=5)
    assert _order(session_factory, 4) == [high, high, low, None]


# A doorbell's claim as a worker makes it (routed: the model it serves) and for any model.
ROUTED = pytest.mark.parametrize("routed", [True, False], ids=["routed", "any model"])


def _claim(sf: SessionFactory, routed: bool) -> list[ClaimedItem]:
    return claim_next(sf, worker="w", lease_seconds=60, serving=FAKE if routed else None)


def _jobs_of(*claims: list[ClaimedItem]) -> list[set[str]]:
    return [{c.job_id for c in claim} for claim in claims]


def _urgent_beside_running(
    sf: SessionFactory, blobs: Blobs, tmp_path: Path, routed: bool, *, low: int, high: int
) -> tuple[str, str]:
    """A job of ``low`` items running (one batch claimed), then one of ``high`` items and
    priority 5: their ids."""
    low_id, _ = _job(sf, blobs, tmp_path, "low", low)
    assert _jobs_of(_claim(sf, routed)) == [{low_id}]
    high_id, _ = _job(sf, blobs, tmp_path, "high", high, priority=5)
    return low_id, high_id


def _two_claims_at_once(
    sf: SessionFactory, routed: bool
) -> tuple[bool | None, list[ClaimedItem], list[ClaimedItem]]:
    """Two claims, the second made while the first holds the job row it picked: whether the
    second was blocked, and what each took."""
    both = Interleaving("claim_next:picked")
    first, second = both.run(lambda: _claim(sf, routed), lambda: _claim(sf, routed))
    return both.second_blocked, first, second


@ROUTED
def test_a_claim_beside_one_holding_the_urgent_job_waits_for_it(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    routed: bool,
) -> None:
    """Invariant I13 between two claims at once: while one claim holds the urgent job's row, a
    second claim waits for it and takes the urgent job's next batch, not a batch of the
    running job of lower priority. (On PostgreSQL the second skipped the held row to the
    lower job: a real worker's two slots let the running job overtake the urgent one.)"""
    monkeypatch.setattr(claims, "HELD_WAIT_MS", 60_000)  # a claim's instant, however slow
    low, high = _urgent_beside_running(session_factory, blobs, tmp_path, routed, low=6, high=4)
    blocked, first, second = _two_claims_at_once(session_factory, routed)
    assert blocked
    assert _jobs_of(first, second) == [{high}, {high}]
    assert _order(session_factory, 3) == [low, low, None]


@ROUTED
def test_a_claim_that_waited_for_a_spent_job_takes_the_next_one(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    routed: bool,
) -> None:
    """Invariant I13 with I14: the claim waited for behind took the urgent job's last items; the
    waiting claim then takes the next job in order instead of nothing (a doorbell that finds
    nothing is not rung again)."""
    monkeypatch.setattr(claims, "HELD_WAIT_MS", 60_000)
    low, high = _urgent_beside_running(session_factory, blobs, tmp_path, routed, low=4, high=2)
    blocked, first, second = _two_claims_at_once(session_factory, routed)
    assert blocked  # it waited behind the claim of the high job's last batch
    assert _jobs_of(first, second) == [{high}, {low}]


@ROUTED
def test_a_job_row_held_past_the_wait_is_passed_for_the_next_job(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    routed: bool,
) -> None:
    """No holder stalls the fleet (docs/design.md#locks-on-postgresql): a retry holds its job's
    row for its whole transaction (74 s for a million items). On PostgreSQL a claim waits
    ``HELD_WAIT_MS`` for the urgent job's row, then takes the next job in order, of lower
    priority, instead of waiting out the lock timeout and losing its doorbell. On SQLite one
    writer at a time: the claim waits for the retry, then takes the urgent job's batch."""
    monkeypatch.setattr(claims, "HELD_WAIT_MS", 200)
    low, high = _urgent_beside_running(session_factory, blobs, tmp_path, routed, low=4, high=4)
    failing = _claim(session_factory, routed)
    assert _jobs_of(failing) == [{high}]
    bad = Outcome(error_code="image_decode_error", error_message="x")
    record_results(session_factory, [ItemOutcome(c.id, c.lease_token, bad) for c in failing])
    retry = Interleaving("retry:reopened", window=2.0)  # the retry holds the high job's row
    requeued, claimed = retry.run(
        lambda: requeue_failed(session_factory, high), lambda: _claim(session_factory, routed)
    )
    assert len(requeued) == 2
    if session_factory.kw["bind"].dialect.name == "postgresql":
        assert not retry.second_blocked and _jobs_of(claimed) == [{low}]
    else:
        assert retry.second_blocked and _jobs_of(claimed) == [{high}]


def test_a_claim_whose_connection_ends_while_it_waits_can_be_retried(
    migrated_pg_url: str, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant I3 (a claim that failed on the database is tried again): the server ends the
    connection of a claim waiting for a held urgent row (PostgreSQL's row lock; SQLite has
    none to wait on). The claim fails with the error ``claim_with_retry`` retries, not one
    left by work done on the dead transaction after it."""
    sf = migrated_session_factory(migrated_pg_url)
    monkeypatch.setattr(claims, "HELD_WAIT_MS", 60_000)
    _, high = _urgent_beside_running(sf, blobs, tmp_path, True, low=4, high=4)
    engine = sf.kw["bind"]
    failed: list[BaseException] = []

    def claim() -> None:
        try:
            _claim(sf, True)
        except BaseException as exc:
            failed.append(exc)

    with engine.connect() as holder, engine.connect() as watcher:
        held = holder.begin()
        holder.execute(text("SELECT id FROM jobs WHERE id = :j FOR UPDATE"), {"j": high})
        waiting = threading.Thread(target=claim)
        waiting.start()
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            watcher.rollback()  # pg_stat_activity is read once per transaction
            pid = watcher.scalar(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            )
            time.sleep(0.02)
        assert pid is not None, "the claim never waited for the held row"
        watcher.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        waiting.join(30)
        held.rollback()
    assert not waiting.is_alive() and len(failed) == 1
    assert is_retryable(failed[0]), repr(failed[0])


def test_a_named_message_waits_while_a_higher_priority_has_work(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Strict priority holds for an item sent by name (one that lost a worker) too: it claims
    nothing while a job of higher priority of its model has work, and runs once that is
    done."""
    serving = FAKE
    _, low_ids = _job(session_factory, blobs, tmp_path, "low", 1)
    high, _ = _job(session_factory, blobs, tmp_path, "high", 2, priority=1)
    named = claim_items(session_factory, low_ids, worker="w", lease_seconds=60, serving=serving)
    assert named == []
    (batch,) = [claim_next(session_factory, worker="w", lease_seconds=60, serving=serving)]
    assert {c.job_id for c in batch} == {high}
    # The high job still runs, but has nothing left to claim: the named item may go.
    named = claim_items(session_factory, low_ids, worker="w", lease_seconds=60, serving=serving)
    assert [c.id for c in named] == low_ids


def test_a_priority_changed_mid_run_reorders_the_next_claims(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    first, _ = _job(session_factory, blobs, tmp_path, "first", 4)
    second, _ = _job(session_factory, blobs, tmp_path, "second", 4)
    assert _order(session_factory, 1) == [first]
    assert set_priority(session_factory, first, 3) == 0
    assert _order(session_factory, 2) == [first, second]  # it took the rest of first
    assert _job_row(session_factory, first).priority == 3
    with pytest.raises(RequestError):
        set_priority(session_factory, second, 101)


def test_a_finished_jobs_priority_cannot_change(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = _job(session_factory, blobs, tmp_path, "done", 2)
    record_results(session_factory, [_ok(c) for c in _next(session_factory)])
    assert _job_row(session_factory, job_id).status == JobStatus.completed
    with pytest.raises(JobsError) as refused:
        set_priority(session_factory, job_id, 1)
    assert refused.value.code == "job_finished"


# --- the completion window --------------------------------------------------------------------


def test_a_job_past_its_window_starts_nothing_more_and_ends_expired(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I5 with a window: the running batch finishes and keeps its results, what had
    not started ends ``expired`` (``batch_expired``), and the job ends ``expired``."""
    job_id, _ = _job(session_factory, blobs, tmp_path, "w", 4, completion_window_seconds=WINDOW)
    running = _next(session_factory)
    later = _expires(session_factory, job_id) + timedelta(seconds=1)
    assert _next(session_factory, now=later) == []
    assert expire_windows(session_factory, now=later) == 2
    assert _job_row(session_factory, job_id).status == JobStatus.in_progress  # one batch runs
    assert record_results(session_factory, [_ok(c) for c in running]) == 2
    job = _job_row(session_factory, job_id)
    assert job.status == JobStatus.expired and job.finished_at is not None
    with session_factory() as session:
        rows = session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq))
        seen = [(r.status, r.error_code) for r in rows]
    assert seen == [("succeeded", None)] * 2 + [("expired", "batch_expired")] * 2


def test_a_job_whose_model_has_no_worker_expires_like_any_other(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = _job(
        session_factory, blobs, tmp_path, "w", 3, completion_window_seconds=WINDOW, model="none"
    )
    later = _expires(session_factory, job_id) + timedelta(seconds=1)
    report = sweep(session_factory, ListPublisher(), max_attempts=3, batch_size=2, now=later)
    assert report.expired == 3
    assert _job_row(session_factory, job_id).status == JobStatus.expired


def test_retry_requeues_expired_items_with_a_new_window(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, ids = _job(session_factory, blobs, tmp_path, "w", 2, completion_window_seconds=WINDOW)
    expire_windows(session_factory, now=_expires(session_factory, job_id) + timedelta(seconds=1))
    assert _job_row(session_factory, job_id).status == JobStatus.expired
    assert requeue_failed(session_factory, job_id, only=("failed",)) == []
    now = utcnow()
    assert sorted(requeue_failed(session_factory, job_id, only=("expired",), now=now)) == sorted(
        ids
    )
    job = _job_row(session_factory, job_id)
    assert job.status == JobStatus.queued and job.expires_at == now + timedelta(seconds=WINDOW)
    record_results(session_factory, [_ok(c) for c in _next(session_factory)])
    assert _job_row(session_factory, job_id).status == JobStatus.completed


def test_expired_items_go_to_the_openai_error_file_as_batch_expired(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = _job(session_factory, blobs, tmp_path, "w", 1, completion_window_seconds=WINDOW)
    expire_windows(session_factory, now=_expires(session_factory, job_id) + timedelta(seconds=1))
    out, errors = io.StringIO(), io.StringIO()
    writer = OpenAIWriter(out, model="fake", errors=errors)
    with session_factory() as session:
        for item in session.scalars(select(Item).where(Item.job_id == job_id)):
            writer.write(item)
    (line,) = [json.loads(text) for text in errors.getvalue().splitlines()]
    assert out.getvalue() == "" and line["error"]["code"] == "batch_expired"


# --- the broker stops growing with the backlog --------------------------------------------------


@pytest.mark.parametrize(("waiting", "rung"), [(None, 8), (0, 64), (60, 4), (64, 0), (90, 0)])
def test_a_submit_rings_no_more_doorbells_than_the_model_needs(
    session_factory: SessionFactory, waiting: int | None, rung: int
) -> None:
    """100 batches of items ring at most ``bell_limit`` doorbells, counting those waiting."""
    publisher = ListPublisher(waiting_count=waiting, bell_limit=8 if waiting is None else 64)
    went = dispatch_items(
        session_factory,
        publisher,
        "job",
        [f"item-{n}" for n in range(800)],
        model="fake",
        batch_size=8,
        stamp=utcnow(),
    )
    assert went and len(publisher.rings) == rung and publisher.batches == []


# --- the window against every transition beside it --------------------------------------------


def _past_window(sf: SessionFactory, job_id: str) -> datetime:
    return _expires(sf, job_id) + timedelta(seconds=1)


def _windowed(sf: SessionFactory, blobs: Blobs, tmp_path: Path, n: int = 4) -> str:
    job_id, _ = _job(sf, blobs, tmp_path, "w", n, completion_window_seconds=WINDOW)
    return job_id


def _ended_once(sf: SessionFactory, job_id: str) -> list[str]:
    """Invariant I5: every item in exactly one terminal state (the list of them, by seq)."""
    found = statuses(sf, job_id)
    assert all(s in {"succeeded", "failed", "cancelled", "expired"} for s in found), found
    return list(found)


def test_expiry_beside_a_claim_expires_only_what_the_claim_did_not_take(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _windowed(session_factory, blobs, tmp_path)
    later = _past_window(session_factory, job_id)
    claimed, _ = Interleaving("claim_next:picked").run(
        lambda: _next(session_factory),
        lambda: expire_windows(session_factory, now=later),
    )
    expire_windows(session_factory, now=later)  # the pass after: whatever the first skipped
    assert len(claimed) == 2
    record_results(session_factory, [_ok(c) for c in claimed])
    assert _ended_once(session_factory, job_id) == ["succeeded"] * 2 + ["expired"] * 2
    assert _job_row(session_factory, job_id).status == JobStatus.expired


def test_expiry_beside_the_last_record_ends_the_job_expired(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _windowed(session_factory, blobs, tmp_path)
    claimed = _next(session_factory)
    later = _past_window(session_factory, job_id)
    written, _ = Interleaving("record:written").run(
        lambda: record_results(session_factory, [_ok(c) for c in claimed]),
        lambda: expire_windows(session_factory, now=later),
    )
    expire_windows(session_factory, now=later)
    assert written == 2
    assert _ended_once(session_factory, job_id) == ["succeeded"] * 2 + ["expired"] * 2
    assert _job_row(session_factory, job_id).status == JobStatus.expired


def test_a_cancel_in_the_expirys_window_ends_the_job_cancelled(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A cancel that comes while the window's expiry holds the job: each item ends once
    (expired or cancelled, never both), and the job ends ``cancelled``, as it was asked."""
    job_id = _windowed(session_factory, blobs, tmp_path)
    later = _past_window(session_factory, job_id)
    expired, said = Interleaving("expire_window:locked").run(
        lambda: expire_windows(session_factory, now=later),
        lambda: cancel_job(session_factory, job_id),
    )
    ended = _ended_once(session_factory, job_id)
    assert ended.count("expired") == expired and len(ended) == 4
    assert _job_row(session_factory, job_id).status in (JobStatus.cancelled, JobStatus.expired)
    assert said in (JobStatus.cancelled, JobStatus.expired, JobStatus.cancelling)
    assert _job_row(session_factory, job_id).status == (
        JobStatus.expired if said == JobStatus.expired else JobStatus.cancelled
    )


def test_expiry_after_a_cancel_leaves_its_items_cancelled(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _windowed(session_factory, blobs, tmp_path)
    later = _past_window(session_factory, job_id)
    said, expired = Interleaving("cancel:marked").run(
        lambda: cancel_job(session_factory, job_id),
        lambda: expire_windows(session_factory, now=later),
    )
    assert expired == 0 and said == JobStatus.cancelled
    assert _ended_once(session_factory, job_id) == ["cancelled"] * 4


def test_a_retry_in_the_expirys_window_gets_a_new_window_and_nothing_expires(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _windowed(session_factory, blobs, tmp_path)
    expire_windows(session_factory, now=_past_window(session_factory, job_id))
    assert _job_row(session_factory, job_id).status == JobStatus.expired
    now = utcnow()
    retried, expired = Interleaving("retry:reopened").run(
        lambda: requeue_failed(session_factory, job_id, now=now),
        lambda: expire_windows(session_factory, now=now + timedelta(seconds=1)),
    )
    assert len(retried) == 4 and expired == 0
    assert statuses(session_factory, job_id) == ["queued"] * 4
    assert _job_row(session_factory, job_id).status == JobStatus.queued


def test_a_finalise_beside_the_expiry_ends_the_job_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I9: the finaliser and the expiry's own finalise see each other's commits; the
    job ends ``expired`` once, with every item ended."""
    job_id = _windowed(session_factory, blobs, tmp_path, n=2)
    later = _past_window(session_factory, job_id)
    _, _expired = Interleaving("finalise:locked").run(
        lambda: finalise_jobs(session_factory, [job_id], now=later),
        lambda: expire_windows(session_factory, now=later),
    )
    expire_windows(session_factory, now=later)
    assert _ended_once(session_factory, job_id) == ["expired"] * 2
    finalise_jobs(session_factory, [job_id], now=later)
    job = _job_row(session_factory, job_id)
    assert job.status == JobStatus.expired and job.finished_at is not None


# --- observable -------------------------------------------------------------------------------


def test_the_backlog_gauge_counts_queued_items_per_model_and_priority(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Read from the database, not the broker (which holds only doorbells); a series whose jobs
    have ended drops to 0."""
    from prometheus_client import REGISTRY

    from jobs import metrics
    from jobs.shares import backlog

    _job(session_factory, blobs, tmp_path, "a", 4)
    urgent, _ = _job(session_factory, blobs, tmp_path, "b", 3, priority=2)
    _job(session_factory, blobs, tmp_path, "c", 2, model="other")
    _next(session_factory)  # two of the urgent job's items run (it goes first): not backlog
    with session_factory() as session:
        rows = sorted(backlog(session))
    assert rows == [("fake", 0, 4), ("fake", 2, 1), ("other", 0, 2)]
    metrics.record_backlog(rows)
    value = REGISTRY.get_sample_value(
        "llava_batch_backlog_items", {"model": "other", "priority": "0"}
    )
    assert value == 2
    cancel_job(session_factory, urgent)
    with session_factory() as session:
        metrics.record_backlog(backlog(session))
    assert (
        REGISTRY.get_sample_value("llava_batch_backlog_items", {"model": "fake", "priority": "2"})
        == 0
    )


def test_the_eta_counts_the_share_of_each_job_of_its_priority(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The model finished 2 items in the last minute: a job of 4 beside a job of 2 of the same
    priority needs its 4 and the other's 2 (they alternate); the job of 2 needs its 2 and 2 of
    the other's; a job of higher priority puts its items ahead of both."""
    from jobs.queries import read_progress

    done, _ = _job(session_factory, blobs, tmp_path, "done", 2)
    record_results(session_factory, [_ok(c) for c in _next(session_factory)])
    four, _ = _job(session_factory, blobs, tmp_path, "four", 4)
    two, _ = _job(session_factory, blobs, tmp_path, "two", 2)

    def eta(job_id: str) -> float | None:
        with session_factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return read_progress(session, job).eta_seconds

    assert eta(four) == pytest.approx(6 / (2 / 60)) and eta(two) == pytest.approx(4 / (2 / 60))
    _job(session_factory, blobs, tmp_path, "urgent", 3, priority=1)
    assert eta(two) == pytest.approx(7 / (2 / 60))
    with session_factory() as session:
        job = session.get(Job, two)
        assert job is not None
        turn = read_progress(session, job).turn
    assert turn is not None and (turn.position, turn.active_jobs, turn.share, turn.ahead) == (
        3,
        3,
        0.0,
        3,
    )
    assert done


def test_a_retried_doorbell_claim_is_the_same_claim(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I3: a retry (its first try committed, its reply lost) under the same token
    returns what that try holds, and claims nothing more."""
    _job(session_factory, blobs, tmp_path, "a", 4)
    first = claim_next(session_factory, worker="w", lease_seconds=60, lease_token="t-1")
    again = claim_next(session_factory, worker="w", lease_seconds=60, lease_token="t-1", retry=True)
    assert [c.id for c in again] == [c.id for c in first] and len(first) == 2
    assert {c.lease_token for c in again} == {"t-1"}
    assert len(_next(session_factory)) == 2 and _next(session_factory) == []
