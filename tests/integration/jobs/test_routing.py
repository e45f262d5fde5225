"""Per-model routing in the database, on both databases: a worker claims only its model's items
and stamps what produced them; the sweeper re-publishes each model's items to that model's
queue, judging lost messages queue by queue; the registry says which models are served.

Invariant checked throughout: an item is produced only by a worker serving its job's model.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from jobs.db import Item, SessionFactory, utcnow
from jobs.dispatch import QUEUE_EMPTY
from jobs.fleet import Serving, beat_worker, forget_worker, live_workers, queue_for
from jobs.lifecycle import claim_items
from jobs.sweeper import republish_queued
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


def test_the_sweeper_republishes_each_models_items_to_its_own_queue(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    _job_a, ids_a = submit_captions(session_factory, blobs, tmp_path / "a", n=2, model=LLAVA.model)
    _job_b, ids_b = submit_captions(session_factory, blobs, tmp_path / "b", n=3, model=NEXT.model)
    later = utcnow() + timedelta(minutes=5)

    publisher = ListPublisher(oldest=QUEUE_EMPTY)  # every message delivered, none claimed: lost
    sent = republish_queued(
        session_factory, publisher, batch_size=8, redispatch_after=timedelta(minutes=2), now=later
    )

    assert sent == 5
    by_model = dict(zip(publisher.models, publisher.batches, strict=True))
    assert sorted(by_model[LLAVA.model]) == sorted(ids_a)
    assert sorted(by_model[NEXT.model]) == sorted(ids_b)


class PerQueue(ListPublisher):
    """A broker where only one model's queue still holds an undelivered message."""

    def __init__(self, busy_model: str) -> None:
        super().__init__()
        self.busy_model = busy_model
        self.asked: list[str] = []

    def oldest_waiting(self, model: str):  # type: ignore[no-untyped-def]
        self.asked.append(model)
        return utcnow() - timedelta(hours=1) if model == self.busy_model else QUEUE_EMPTY


def test_lost_messages_are_judged_queue_by_queue(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    _, ids_a = submit_captions(session_factory, blobs, tmp_path / "a", n=2, model=LLAVA.model)
    _, _ids_b = submit_captions(session_factory, blobs, tmp_path / "b", n=2, model=NEXT.model)
    later = utcnow() + timedelta(minutes=5)

    # NeXT's queue still holds a message older than ours (no worker took it yet): ours may be
    # waiting behind it, so re-publishing it would only duplicate. LLaVA's queue is empty.
    publisher = PerQueue(busy_model=NEXT.model)
    republish_queued(
        session_factory, publisher, batch_size=8, redispatch_after=timedelta(minutes=2), now=later
    )

    assert sorted(publisher.asked) == sorted([LLAVA.model, NEXT.model])
    assert publisher.models == [LLAVA.model]
    assert sorted(publisher.item_ids) == sorted(ids_a)


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
