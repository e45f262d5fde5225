"""Publishing in pipelined windows: every message goes out once, in order, after the commit; a
window the broker did not take leaves its items (and every later one) for the sweeper."""

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
from jobs.db import Item, SessionFactory
from jobs.dispatch import CeleryPublisher, DispatchError
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
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


def test_messages_go_out_pipelined_in_order(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch_module, "MESSAGES_PER_ROUND_TRIP", 2)
    result = _submit(session_factory, blobs, tmp_path / "c", CeleryPublisher(redis_url, "q"), n=10)
    assert result.dispatched
    raw = redis.Redis.from_url(redis_url).lrange("q.m", 0, -1)
    sent = []
    for message in reversed(raw):  # kombu pushes on the left: the oldest is the last
        envelope = json.loads(message)
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        sent.append(kwargs)
        # What Celery shows of the arguments is a summary, not a repr of every id.
        count = len(kwargs["item_ids"])
        assert envelope["headers"]["kwargsrepr"] == (
            f"{{'job_id': '{result.job_id}', 'item_ids': <{count} ids>}}"
        )
    items = _items(session_factory, result.job_id)
    assert [len(k["item_ids"]) for k in sent] == [3, 3, 3, 1]
    assert [i for k in sent for i in k["item_ids"]] == [i.id for i in items]
    stamps = {datetime.fromisoformat(k["dispatched_at"]) for k in sent}
    assert stamps == {i.dispatched_at for i in items} and len(stamps) == 1


class _FailingWindow:
    """Takes every message, but the broker fails the flush of window ``fail_at`` (0-based)."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.windows, self.sent = fail_at, 0, 0

    def publish(self, job_id: str, item_ids: Any, **_: Any) -> None:
        self.sent += 1

    def oldest_waiting(self, model: str) -> datetime | None:
        return None

    @contextmanager
    def batched(self) -> Iterator[None]:
        window = self.windows
        self.windows += 1
        yield
        if window == self.fail_at:
            raise DispatchError("flush failed")


def test_a_failed_window_leaves_it_and_the_rest_to_the_sweeper(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch_module, "MESSAGES_PER_ROUND_TRIP", 2)  # windows of 6 items
    monkeypatch.setattr(dispatch_module, "_UNDO_CHUNK", 4)
    publisher = _FailingWindow(fail_at=1)
    result = _submit(session_factory, blobs, tmp_path / "c", publisher, n=16)
    assert not result.dispatched
    assert publisher.windows == 2 and publisher.sent == 4  # stopped after the failed window
    stamped = [i.dispatched_at is not None for i in _items(session_factory, result.job_id)]
    assert stamped == [True] * 6 + [False] * 10


def test_an_unreachable_broker_leaves_every_item_to_the_sweeper(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    dead = CeleryPublisher(f"redis://127.0.0.1:{free_port()}/0", "q")
    result = _submit(session_factory, blobs, tmp_path / "c", dead, n=4)
    assert not result.dispatched
    items = _items(session_factory, result.job_id)
    assert len(items) == 4 and all(i.dispatched_at is None for i in items)
