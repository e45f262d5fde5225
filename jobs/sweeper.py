"""The sweeper: what makes the invariants hold after crashes and lost messages.

One pass takes back expired leases, cancels jobs whose submission stopped half-written (their
submit lease ran out), cancels what a closing job still has queued, expires what has not
started of jobs whose completion window passed, re-publishes items that lost a worker (each
alone, by name) and rings for every model with work whose queue is short of doorbells, and
finalises jobs whose rows are all written and whose items are all terminal. Each step is a
transition of ``jobs.lifecycle``; passes are safe to run from several processes at once. Then
it forgets workers long dead (``jobs.fleet``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.db import SessionFactory, utcnow
from jobs.dispatch import DispatchError, Publisher, room_for
from jobs.fleet import WORKER_ROWS_KEPT_FOR, forget_dead_workers
from jobs.hooks import reached
from jobs.lifecycle import (
    Expired,
    ToPublish,
    abandon_submissions,
    cancel_stranded,
    expire_leases,
    expire_windows,
    finalise_jobs,
    jobs_ready_to_finalise,
    models_with_open_jobs,
    models_with_work,
    stamp_rung,
    started_since,
    take_for_publishing,
    undo_dispatch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport(Expired):
    """What one pass did: ``Expired``'s counts for the leases it took back (``cancelled`` adds
    the queued items of closing jobs), then items re-published and jobs finalised."""

    republished: int = 0
    finalised: int = 0
    abandoned: int = 0  # jobs whose submission stopped half-written: cancelled
    expired: int = 0  # items not started when their job's completion window passed
    rung: int = 0  # doorbells sent to queues short of them


def sweep(
    session_factory: SessionFactory,
    publisher: Publisher,
    *,
    max_attempts: int,
    batch_size: int,
    redispatch_after: timedelta = timedelta(seconds=120),
    now: datetime | None = None,
    job_id: str | None = None,
    workers_kept_for: timedelta = WORKER_ROWS_KEPT_FOR,
) -> SweepReport:
    """One pass over every job, or, given ``job_id``, over that job only: the one-process
    runner's sweep, whose publisher delivers its own job's messages only. A pass over every
    job there would stamp other jobs' queued items dispatched (the right to publish them) and
    send nothing, so their own sweeper would wait ``redispatch_after`` before sending them."""
    now = now or utcnow()
    among = None if job_id is None else [job_id]
    expired = expire_leases(session_factory, max_attempts=max_attempts, now=now, among=among)
    abandoned = abandon_submissions(session_factory, now=now, among=among)
    cancelled = cancel_stranded(session_factory, now=now, among=among)
    windows = expire_windows(session_factory, now=now, among=among)
    republished = republish_queued(
        session_factory,
        publisher,
        batch_size=batch_size,
        redispatch_after=redispatch_after,
        now=now,
        among=among,
    )
    rung = ring_for_work(
        session_factory, publisher, redispatch_after=redispatch_after, now=now, among=among
    )
    ready = jobs_ready_to_finalise(session_factory, among=among)
    finalised = finalise_jobs(session_factory, ready, now=now)
    if job_id is None:
        forget_dead_workers(session_factory, kept_for=workers_kept_for, now=now)
    report = SweepReport(
        requeued=expired.requeued,
        failed_worker_lost=expired.failed_worker_lost,
        cancelled=expired.cancelled + cancelled,
        republished=republished,
        finalised=finalised,
        abandoned=len(abandoned),
        expired=windows,
        rung=rung,
    )
    if report != SweepReport():
        log.info("sweep %s", report)
    return report


def republish_queued(
    session_factory: SessionFactory,
    publisher: Publisher,
    *,
    batch_size: int,
    redispatch_after: timedelta,
    now: datetime,
    among: Collection[str] | None = None,
) -> int:
    """Publishes queued items that have no message, or whose message is lost.

    No message: handed back, re-queued after a lost lease, or never sent (broker down at
    submit). Lost: dispatched more than ``redispatch_after`` ago AND before the oldest message
    still waiting in the broker (the queue is first in, first out, so anything sent before that
    message was delivered; an item delivered but still queued lost its message). When the broker
    cannot be asked, age alone decides. Duplicates are harmless: the claim lets one through.
    """
    sent = 0
    for model in models_with_open_jobs(session_factory, among=among):
        # Each model has its own broker queue, so "delivered" is told queue by queue.
        oldest_waiting = publisher.oldest_waiting(model)
        stale_before = now - redispatch_after
        if oldest_waiting is not None:
            stale_before = min(stale_before, oldest_waiting)
        taken = take_for_publishing(
            session_factory, model=model, stale_before=stale_before, now=now, among=among
        )
        reached("republish:taken")
        sent += _publish_taken(session_factory, publisher, taken, model, batch_size, now)
    return sent


def ring_for_work(
    session_factory: SessionFactory,
    publisher: Publisher,
    *,
    redispatch_after: timedelta,
    now: datetime,
    among: Collection[str] | None = None,
) -> int:
    """Makes sure every model with claimable work has doorbells: its queue is topped up to the
    publisher's ``bell_limit``. Doorbells are lost with a flushed broker, a dropped message or
    a worker that died holding one; a worker that claims work rings again, so a busy queue
    keeps its count. Where the queue cannot be asked, the model is rung for only when none of
    its items has started for ``redispatch_after``: its doorbells are presumed lost. Then the
    items it rang for are stamped dispatched. Returns the doorbells sent."""
    sent = 0
    for model in models_with_work(session_factory, now=now, among=among):
        waiting = publisher.waiting(model)  # asked once: a round trip to the broker
        if waiting is None and started_since(
            session_factory, model=model, since=now - redispatch_after, among=among
        ):
            continue
        count = room_for(publisher.bell_limit, publisher.bell_limit, waiting)
        try:
            publisher.ring(model, count, dispatched_at=now)
        except DispatchError as exc:
            log.warning("ringing failed model=%s: %s", model, exc)
            continue
        sent += count
        stamp_rung(session_factory, model=model, now=now, among=among)
    return sent


def _publish_taken(
    session_factory: SessionFactory,
    publisher: Publisher,
    taken: list[ToPublish],
    model: str,
    batch_size: int,
    now: datetime,
) -> int:
    sent: set[str] = set()
    for job_id, item_ids in _batches(taken, batch_size):
        try:
            publisher.publish(job_id, item_ids, model=model, dispatched_at=now)
        except DispatchError as exc:
            log.warning("republish failed job=%s: %s", job_id, exc)
            unsent = [t.item_id for t in taken if t.item_id not in sent]
            undo_dispatch(session_factory, unsent, stamp=now)
            break
        sent.update(item_ids)
    return len(sent)


def _batches(taken: list[ToPublish], batch_size: int) -> list[tuple[str, list[str]]]:
    # An item that already lost a worker goes out alone: if it is what kills workers, it must
    # not take the innocent items of its batch down with it again (and use up their attempts).
    batches: list[tuple[str, list[str]]] = []
    fresh: dict[str, list[str]] = defaultdict(list)
    for t in taken:
        if t.attempts:
            batches.append((t.job_id, [t.item_id]))
        else:
            fresh[t.job_id].append(t.item_id)
    for job_id, ids in fresh.items():
        batches += [(job_id, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    return batches
