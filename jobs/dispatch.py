"""Ringing the bell: publish batch messages (ids only) after the rows are committed.

The message is a doorbell, never the data: losing it costs latency (the sweeper re-publishes),
never an item.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, Protocol

from jobs.db import SessionFactory
from jobs.fleet import queue_for
from jobs.lifecycle import undo_dispatch

log = logging.getLogger(__name__)

# What ``oldest_waiting`` answers for an empty queue: every message sent so far was delivered.
QUEUE_EMPTY = datetime.max.replace(tzinfo=UTC)

RUN_BATCH_TASK = "llava_batch.run_batch"
SWEEP_TASK = "llava_batch.sweep"


class DispatchError(Exception):
    """Raised when the broker cannot take a message; the rows stay queued for the sweeper."""

    code = "dispatch_pending"


class Publisher(Protocol):
    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        """Sends one batch message to the queue of ``model`` (the job's);
        ``dispatched_at`` is the items' dispatch stamp."""
        ...

    def oldest_waiting(self, model: str) -> datetime | None:
        """The dispatch stamp of the oldest message still waiting in ``model``'s queue;
        ``QUEUE_EMPTY`` when none waits; None when that cannot be known."""
        ...


class CeleryPublisher:
    """Publishes by task name, so the producer never imports the worker (or torch); ``queue``
    is the deployment's queue prefix, each model's messages go to ``queue_for(queue, model)``."""

    def __init__(self, broker_url: str, queue: str, *, app: Any = None) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self._app = app
        self._held = threading.local()  # this thread's producer inside ``batched``

    @property
    def app(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("llava-batch-producer", broker=self.broker_url)
            self._app.conf.update(task_serializer="json", accept_content=["json"])
        return self._app

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"job_id": job_id, "item_ids": list(item_ids)}
        if dispatched_at is not None:
            kwargs["dispatched_at"] = dispatched_at.isoformat()
        try:
            self.app.send_task(
                RUN_BATCH_TASK,
                kwargs=kwargs,
                queue=queue_for(self.queue, model),
                serializer="json",
                # What Celery shows of the arguments (events, logs): said here, rather than
                # built by its saferepr of every id, which cost a tenth of a big submit's rows.
                argsrepr="()",
                kwargsrepr=f"{{'job_id': {job_id!r}, 'item_ids': <{len(item_ids)} ids>}}",
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                producer=getattr(self._held, "producer", None),
            )
        except Exception as exc:  # kombu raises many types for a dead broker
            raise DispatchError(f"The broker at {_redact(self.broker_url)} is unreachable") from exc

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Publishes made in this thread inside go out through one producer, pipelined where
        kombu can (its Redis publish batch: one round trip for many messages) and flushed on
        leaving; DispatchError if the broker did not take them all (some may have gone)."""
        try:
            with self.app.producer_or_acquire() as producer:
                batch = getattr(producer, "batch", None)  # kombu >= 5.7
                with batch(max_size=2 * MESSAGES_PER_ROUND_TRIP) if batch else nullcontext():
                    self._held.producer = producer
                    try:
                        yield
                    finally:
                        self._held.producer = None
        except DispatchError:
            raise
        except Exception as exc:
            raise DispatchError(f"The broker at {_redact(self.broker_url)} is unreachable") from exc

    def oldest_waiting(self, model: str) -> datetime | None:
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return None
        try:
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            try:
                # kombu pushes on the left and pops on the right: the oldest is the last.
                raw = client.lindex(queue_for(self.queue, model), -1)
            finally:
                client.close()
        except Exception:
            return None
        return QUEUE_EMPTY if raw is None else _stamp_of(raw)


class CallbackPublisher:
    """Hands batches to a function in this process: the embedded one-process mode and tests."""

    def __init__(self, callback: Callable[[str, list[str]], None]) -> None:
        self._callback = callback

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        self._callback(job_id, list(item_ids))

    def oldest_waiting(self, model: str) -> datetime | None:
        return None


# Messages sent per broker round trip by a publisher that can pipeline (``batched``).
MESSAGES_PER_ROUND_TRIP = 500
# Item ids per UPDATE that takes back the stamp of items whose messages did not go out.
_UNDO_CHUNK = 5_000


def dispatch_items(
    session_factory: SessionFactory,
    publisher: Publisher,
    job_id: str,
    item_ids: Sequence[str],
    *,
    model: str,
    batch_size: int,
    stamp: datetime,
) -> bool:
    """Publishes items already stamped ``dispatched_at = stamp`` (in the transaction that made
    them queued), in messages of ``batch_size``, pipelined where the publisher can. On a dead
    broker the items of every message that may not have gone out lose their stamp, so the
    sweeper sends them as soon as it can (twice is harmless: a claim finds nothing the second
    time); returns whether all went out."""
    batched: Callable[[], AbstractContextManager[None]] | None = getattr(publisher, "batched", None)
    window = batch_size * (MESSAGES_PER_ROUND_TRIP if batched is not None else 1)
    for start in range(0, len(item_ids), window):
        end = min(start + window, len(item_ids))
        try:
            with batched() if batched is not None else nullcontext():
                for first in range(start, end, batch_size):
                    batch = item_ids[first : min(first + batch_size, end)]
                    publisher.publish(job_id, batch, model=model, dispatched_at=stamp)
        except DispatchError as exc:
            log.warning("dispatch pending job=%s: %s", job_id, exc)
            for undo in range(start, len(item_ids), _UNDO_CHUNK):
                undo_dispatch(session_factory, item_ids[undo : undo + _UNDO_CHUNK], stamp=stamp)
            return False
    return True


def _stamp_of(raw: bytes | str) -> datetime | None:
    """The ``dispatched_at`` of a raw kombu message on Redis; None when it has none."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return datetime.fromisoformat(kwargs["dispatched_at"])
    except Exception:  # a foreign or older message: its age cannot be told
        return None


def _redact(url: str) -> str:
    # Credentials never reach logs or the terminal.
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
