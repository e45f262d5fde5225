"""Ringing in pipelined windows: a submit's doorbells (one per batch, none naming an item) go
out through one pipelined producer after the commit, and claim the items in order; a window the
broker did not take leaves its chunk's items (and every later chunk's) for the sweeper, which
rings for them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from jobs import dispatch as dispatch_module
from jobs.db import Item, SessionFactory, utcnow
from jobs.dispatch import CeleryPublisher, DispatchError
from jobs.lifecycle import claim_next
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from storage import Blobs
from tests.helpers import write_images
from tests.services import free_port


def _submit(
    session_factory: SessionFactory, blobs: Blobs, folder: Path, publisher: Any, n: int
) -> SubmitResult:
    write_images(folder, n)
    return submit_job(
        SubmitRequest.of("caption", [str(folder)], "m", max_new_tokens=4, batch_size=3),
        session_factory=session_factory,
        blobs=blobs,
        publisher=publisher,
        max_prompt_chars=4000,
    )


def _items(session_factory: SessionFactory, job_id: str) -> list[Item]:
    with session_factory() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _claim_all(session_factory: SessionFactory) -> list[list[str]]:
    """Doorbells answered until one claims nothing: each claim's item ids, in claim order."""
    batches = []
    while claimed := claim_next(session_factory, worker="w", lease_seconds=60):
        batches.append([c.id for c in claimed])
    return batches


class _Watched(CeleryPublisher):
    """A real publisher that counts the pipelined windows it opens (``batched``) and notes, for
    each message, whether it went out through the window's producer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.windows = 0
        self.through_window: list[bool] = []

    @contextmanager
    def batched(self) -> Iterator[None]:
        self.windows += 1
        with super().batched():
            yield

    def _send(self, model: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        self.through_window.append(getattr(self._held, "producer", None) is not None)
        super()._send(model, kwargs, kwargsrepr)


def _waiting(redis_url: str, key: str = "q.m") -> list[dict[str, Any]]:
    """The messages waiting in ``key``, oldest first: their envelope's headers and kwargs."""
    out = []
    for message in reversed(redis.Redis.from_url(redis_url).lrange(key, 0, -1)):
        envelope = json.loads(message)  # kombu pushes on the left: the oldest is the last
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        out.append({"headers": envelope["headers"], "kwargs": kwargs})
    return out


def test_doorbells_go_out_pipelined_and_claim_in_order(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch_module, "MESSAGES_PER_ROUND_TRIP", 2)
    publisher = _Watched(redis_url, "q")
    result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=10)
    assert result.dispatched
    # One doorbell per batch of 3, all through one pipelined window.
    assert publisher.windows == 1 and publisher.through_window == [True] * 4
    sent = _waiting(redis_url)
    assert len(sent) == 4
    items = _items(session_factory, result.job_id)
    for message in sent:
        kwargs = message["kwargs"]
        assert set(kwargs) == {"model", "dispatched_at"} and kwargs["model"] == "m"
        # What Celery shows of the arguments is a summary, not a repr of them.
        assert message["headers"]["kwargsrepr"] == "{'model': 'm'}"
    stamps = {datetime.fromisoformat(m["kwargs"]["dispatched_at"]) for m in sent}
    assert stamps == {i.dispatched_at for i in items} and len(stamps) == 1
    # Their claims take the job's batches in order, every item once.
    claimed = _claim_all(session_factory)
    assert [len(ids) for ids in claimed] == [3, 3, 3, 1]
    assert [i for ids in claimed for i in ids] == [i.id for i in items]


class _FailingWindow(_Watched):
    """Real Redis, but the broker fails the flush of window ``fail_at`` (0-based): its
    messages may have gone, the publisher cannot tell, and raises."""

    def __init__(self, *args: Any, fail_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at = fail_at

    @contextmanager
    def batched(self) -> Iterator[None]:
        window = self.windows
        with super().batched():
            yield
        if window == self.fail_at:
            raise DispatchError("flush failed")


def test_a_failed_window_leaves_it_and_the_rest_to_the_sweeper(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 16 items in batches of 3, chunks of 6 rows: chunks of 3, 6, 6 and 1 ring 1, 2, 2 and 1
    # doorbells; a ring of more than one is a pipelined window.
    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 6)
    monkeypatch.setattr(dispatch_module, "MESSAGES_PER_ROUND_TRIP", 2)
    monkeypatch.setattr(dispatch_module, "_UNDO_CHUNK", 4)  # the failed chunk's 6: two undos
    publisher = _FailingWindow(redis_url, "q", fail_at=1)
    result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=16)
    assert not result.dispatched
    # Stopped after the failed window (the third chunk's): the last chunk rang nothing.
    assert publisher.windows == 2 and publisher.through_window == [False, True, True, True, True]
    stamped = [i.dispatched_at is not None for i in _items(session_factory, result.job_id)]
    assert stamped == [True] * 9 + [False] * 7

    # The sweeper tops the queue up to its limit and stamps what it rang for; the doorbells
    # then claim every item, in order.
    back = CeleryPublisher(redis_url, "q", bell_limit=8)
    report = sweep(session_factory, back, max_attempts=3, batch_size=3, now=utcnow())
    assert (report.rung, report.republished) == (8 - 5, 0)
    assert len(_waiting(redis_url)) == 8
    items = _items(session_factory, result.job_id)
    assert None not in {i.dispatched_at for i in items}
    assert [i for ids in _claim_all(session_factory) for i in ids] == [i.id for i in items]


def test_an_unreachable_broker_leaves_every_item_to_the_sweeper(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    dead = CeleryPublisher(f"redis://127.0.0.1:{free_port()}/0", "q")
    result = _submit(session_factory, blobs, tmp_path / "c", dead, n=4)
    assert not result.dispatched
    items = _items(session_factory, result.job_id)
    assert len(items) == 4 and all(i.dispatched_at is None for i in items)
