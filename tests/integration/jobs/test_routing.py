"""Per-model routing in the database, on both databases: a worker claims only its model's items
and stamps what produced them; the sweeper rings each model's own queue for its claimable items
and re-publishes each model's items that lost a worker to that model's queue, judging lost
messages queue by queue; the registry says which models are served.

Invariant checked throughout: an item is produced only by a worker serving its job's model.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from jobs.db import Item, SessionFactory, utcnow
from jobs.dispatch import QUEUE_EMPTY
from jobs.fleet import Serving, beat_worker, forget_worker, live_workers, queue_for
from jobs.lifecycle import claim_items, claim_next, expire_leases
from jobs.sweeper import republish_queued, sweep
from storage import Blobs
from tests.helpers import ListPublisher, submit_captions

LLAVA = Serving("tiny-llava", "local-abc", "none")
NEXT = Serving("tiny-llava-next", None, "4bit")


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def test_a_worker_claims_only_the_items_of_the_model_it_serves(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_a, ids_a = submit_captions(session_factory, blobs, tmp_path / "a", n=2, model=LLAVA.model)
    job_b, ids_b = submit_captions(session_factory, blobs, tmp_path / "b", n=2, model=NEXT.model)

    # One message carrying both jobs' ids (a misrouted or hand-made one) to the NeXT worker.
    claimed = claim_items(
        session_factory, ids_a + ids_b, worker="next-1", lease_seconds=60, serving=NEXT
    )

    assert sorted(c.id for c in claimed) == sorted(ids_b)
    assert all(i.status == "queued" and i.model is None for i in _items(session_factory, job_a))
    for item in _items(session_factory, job_b):
        assert (item.status, item.worker) == ("running", "next-1")
        assert (item.model, item.model_revision, item.quantization) == (
            "tiny-llava-next",
            None,
            "4bit",
        )


def _lose_a_worker(sf: SessionFactory, ids: list[str], serving: Serving, at: datetime) -> None:
    """Claims ``ids`` for a worker that dies: at ``at`` their lease has run out and they are
    queued again, with an attempt spent and no message (docs/design.md#I11)."""
    claimed = claim_items(sf, ids, worker="dead", lease_seconds=10, serving=serving, now=at)
    assert sorted(c.id for c in claimed) == sorted(ids)
    expire_leases(sf, max_attempts=3, now=at + timedelta(seconds=11))


def test_the_sweeper_republishes_each_models_items_to_its_own_queue(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Every message the sweeper sends goes to the queue of its items' model: an item that
    lost a worker by name, alone; the doorbells for the rest to each model with work."""
    _job_a, ids_a = submit_captions(session_factory, blobs, tmp_path / "a", n=2, model=LLAVA.model)
    _job_b, ids_b = submit_captions(session_factory, blobs, tmp_path / "b", n=3, model=NEXT.model)
    start = utcnow()
    _lose_a_worker(session_factory, ids_a[:1], LLAVA, start)
    _lose_a_worker(session_factory, ids_b[:2], NEXT, start)
    later = start + timedelta(minutes=5)

    publisher = ListPublisher(oldest=QUEUE_EMPTY, waiting_count=0, bell_limit=2)
    report = sweep(session_factory, publisher, max_attempts=3, batch_size=8, now=later)

    assert report.republished == 3
    sent = sorted(zip(publisher.models, publisher.batches, strict=True))
    assert sent == sorted([(LLAVA.model, [ids_a[0]])] + [(NEXT.model, [i]) for i in ids_b[:2]])
    assert sorted(publisher.rings) == sorted([(LLAVA.model, None), (NEXT.model, None)] * 2)
    # What a doorbell of each queue claims is that model's work that lost no worker.
    claimed = claim_next(session_factory, worker="next-1", lease_seconds=60, serving=NEXT)
    assert [c.id for c in claimed] == ids_b[2:]
    claimed = claim_next(session_factory, worker="llava-1", lease_seconds=60, serving=LLAVA)
    assert [c.id for c in claimed] == ids_a[1:]


class PerQueue(ListPublisher):
    """A broker where only one model's queue still holds an undelivered message."""

    def __init__(self, busy_model: str, sent_at: datetime) -> None:
        super().__init__()
        self.busy_model = busy_model
        self.sent_at = sent_at
        self.asked: list[str] = []

    def oldest_waiting(self, model: str):  # type: ignore[no-untyped-def]
        self.asked.append(model)
        return self.sent_at - timedelta(hours=1) if model == self.busy_model else QUEUE_EMPTY


def test_lost_messages_are_judged_queue_by_queue(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Items that lost a worker, each sent by name: whether a message was lost is told by the
    oldest message still waiting in its own model's queue, not another model's."""
    _, ids_a = submit_captions(session_factory, blobs, tmp_path / "a", n=2, model=LLAVA.model)
    _, ids_b = submit_captions(session_factory, blobs, tmp_path / "b", n=2, model=NEXT.model)
    start = utcnow()
    _lose_a_worker(session_factory, ids_a, LLAVA, start)
    _lose_a_worker(session_factory, ids_b, NEXT, start)
    sent_at = start + timedelta(seconds=20)
    first = ListPublisher(oldest=QUEUE_EMPTY)  # no message: each sent at once
    redispatch_after = timedelta(minutes=2)
    republish_queued(
        session_factory, first, batch_size=8, redispatch_after=redispatch_after, now=sent_at
    )
    assert sorted(first.item_ids) == sorted(ids_a + ids_b)
    later = sent_at + timedelta(minutes=5)

    # NeXT's queue still holds a message older than ours (no worker took it yet): ours may be
    # waiting behind it, so re-publishing it would only duplicate. LLaVA's queue is empty.
    publisher = PerQueue(busy_model=NEXT.model, sent_at=sent_at)
    republish_queued(
        session_factory, publisher, batch_size=8, redispatch_after=redispatch_after, now=later
    )

    assert sorted(publisher.asked) == sorted([LLAVA.model, NEXT.model])
    assert publisher.models == [LLAVA.model] * 2
    assert sorted(publisher.batches) == sorted([i] for i in ids_a)


def test_the_registry_counts_workers_that_beat_recently(session_factory: SessionFactory) -> None:
    now = utcnow()
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=10, now=now) == 0

    beat_worker(session_factory, "gpu0@host", LLAVA, now=now - timedelta(seconds=5))
    beat_worker(session_factory, "gpu1@host", LLAVA, now=now - timedelta(seconds=40))  # 4 beats
    beat_worker(session_factory, "gpu2@host", NEXT, now=now)

    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=10, now=now) == 1
    assert live_workers(session_factory, NEXT.model, heartbeat_seconds=10, now=now) == 1
    assert live_workers(session_factory, "other", heartbeat_seconds=10, now=now) == 0

    beat_worker(session_factory, "gpu1@host", LLAVA, now=now)  # a beat refreshes its row
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=10, now=now) == 2
    forget_worker(session_factory, "gpu0@host")
    assert live_workers(session_factory, LLAVA.model, heartbeat_seconds=10, now=now) == 1


def test_each_model_has_its_own_queue_under_the_deployments_prefix() -> None:
    assert queue_for("llava-batch", "tiny-llava") == "llava-batch.tiny-llava"
    assert queue_for("llava-batch", "tiny-llava") != queue_for("llava-batch", "tiny-llava-next")
