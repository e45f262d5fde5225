"""Ringing the bell: publish messages (ids only) after the rows are committed.

A message is a doorbell, never the data: losing it costs latency (the sweeper rings again),
never an item. Most messages name no item at all: a doorbell for a model says "there is work",
and the worker that takes it claims the next batch of the next job in priority and turn order
(``jobs.lifecycle.claim_next``), so a model's queue holds at most ``bell_limit`` doorbells
however many items wait. Only an item that lost a worker is sent by name, alone
(docs/design.md#I11).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, Protocol

from jobs.db import SessionFactory
from jobs.fleet import queue_for
from jobs.lifecycle import undo_dispatch
from jobs.settings import DEFAULT_DOORBELLS, Settings

log = logging.getLogger(__name__)

# What ``oldest_waiting`` answers for an empty queue: every message sent so far was delivered.
QUEUE_EMPTY = datetime.max.replace(tzinfo=UTC)

RUN_BATCH_TASK = "llava_batch.run_batch"
SWEEP_TASK = "llava_batch.sweep"

# Every Celery app of ours, a producer's (submit, the sweeper) and a worker's: only JSON crosses
# the broker, and each message sent is announced by a task-sent event, so Flower and
# ``celery events`` show what waits in a queue (the doorbells), not only what workers took.
CELERY_CLIENT_CONF: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_send_sent_event": True,
}


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

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        """Sends ``count`` doorbells to ``model``'s queue (``job_id``: the job that rang, for
        a publisher that serves one job; a worker claims by priority and turn whatever it)."""
        ...

    def waiting(self, model: str) -> int | None:
        """How many messages wait in ``model``'s queue; None when that cannot be known."""
        ...

    def oldest_waiting(self, model: str) -> datetime | None:
        """The dispatch stamp of the oldest message still waiting in ``model``'s queue;
        ``QUEUE_EMPTY`` when none waits; None when that cannot be known."""
        ...

    @property
    def bell_limit(self) -> int:
        """The most doorbells worth having in one model's queue."""
        ...


DEFAULT_BELL_LIMIT = DEFAULT_DOORBELLS  # LLAVA_BATCH_DOORBELLS sets it for a bigger fleet


class CeleryPublisher:
    """Publishes by task name, so the producer never imports the worker (or torch); ``queue``
    is the deployment's queue prefix, each model's messages go to ``queue_for(queue, model)``."""

    def __init__(
        self, broker_url: str, queue: str, *, app: Any = None, bell_limit: int = DEFAULT_BELL_LIMIT
    ) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self._app = app
        self._held = threading.local()  # this thread's producer inside ``batched``
        self._bell_limit = bell_limit

    @classmethod
    def for_settings(cls, settings: Settings, *, app: Any = None) -> CeleryPublisher:
        """The deployment's publisher: its broker, queue prefix and doorbell limit."""
        return cls(settings.broker_url, settings.queue, app=app, bell_limit=settings.doorbells)

    @property
    def bell_limit(self) -> int:
        return self._bell_limit

    @property
    def app(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("llava-batch-producer", broker=self.broker_url)
            self._app.conf.update(CELERY_CLIENT_CONF)
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
        # What Celery shows of the arguments (events, logs): said here, rather than built by
        # its saferepr of every id.
        self._send(model, kwargs, f"{{'job_id': {job_id!r}, 'item_ids': <{len(item_ids)} ids>}}")

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"model": model}
        if dispatched_at is not None:
            kwargs["dispatched_at"] = dispatched_at.isoformat()
        if count <= 0:
            return
        with self.batched() if count > 1 else nullcontext():
            for _ in range(count):
                self._send(model, kwargs, f"{{'model': {model!r}}}")

    def _send(self, model: str, kwargs: dict[str, Any], kwargsrepr: str) -> None:
        try:
            self.app.send_task(
                RUN_BATCH_TASK,
                kwargs=kwargs,
                queue=queue_for(self.queue, model),
                serializer="json",
                argsrepr="()",
                kwargsrepr=kwargsrepr,
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
        # kombu pushes on the left and pops on the right: the oldest is the last.
        raw = self._ask_redis(lambda client, queue: client.lindex(queue, -1), model)
        if raw is _UNKNOWN:
            return None
        return QUEUE_EMPTY if raw is None else _stamp_of(raw)

    def waiting(self, model: str) -> int | None:
        length = self._ask_redis(lambda client, queue: client.llen(queue), model)
        return None if length is _UNKNOWN else int(length)

    def _ask_redis(self, ask: Callable[[Any, str], Any], model: str) -> Any:
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return _UNKNOWN
        try:
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            try:
                return ask(client, queue_for(self.queue, model))
            finally:
                client.close()
        except Exception:
            return _UNKNOWN


_UNKNOWN = object()  # what a broker that cannot be asked answers


class CallbackPublisher:
    """Hands batches to a function in this process: the embedded one-process mode and tests.
    A doorbell reaches it as the job that rang (None: the sweeper's, for no job in particular)
    and no item ids; ``waiting`` says how many are still waiting, where the caller knows."""

    def __init__(
        self,
        callback: Callable[[str | None, list[str]], None],
        *,
        waiting: Callable[[], int] | None = None,
        bell_limit: int = DEFAULT_BELL_LIMIT,
    ) -> None:
        self._callback = callback
        self._waiting = waiting
        self._bell_limit = bell_limit

    @property
    def bell_limit(self) -> int:
        return self._bell_limit

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        for _ in range(count):
            self._callback(job_id, [])

    def waiting(self, model: str) -> int | None:
        return None if self._waiting is None else self._waiting()

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


def doorbells_to_send(publisher: Publisher, model: str, wanted: int) -> int:
    """How many of ``wanted`` doorbells to send to ``model``'s queue: none past the
    publisher's ``bell_limit`` counting those already waiting (all up to the limit where the
    queue cannot be asked)."""
    return room_for(wanted, publisher.bell_limit, publisher.waiting(model))


def room_for(wanted: int, bell_limit: int, waiting: int | None) -> int:
    """``doorbells_to_send`` for a queue whose waiting count is known already (None: unknown)."""
    return max(0, min(wanted, bell_limit - (waiting or 0)))


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
    """Rings for items already stamped ``dispatched_at = stamp`` (in the transaction that made
    them queued): a doorbell per batch of ``batch_size``, up to the model's ``bell_limit`` with
    those already waiting; the workers that take them claim by priority and turn. On a dead
    broker the items lose their stamp, so the sweeper rings for them as soon as it can (a
    doorbell too many claims nothing); returns whether the doorbells went out."""
    if not item_ids:
        return True
    wanted = -(-len(item_ids) // max(1, batch_size))
    try:
        publisher.ring(
            model, doorbells_to_send(publisher, model, wanted), job_id=job_id, dispatched_at=stamp
        )
    except DispatchError as exc:
        log.warning("dispatch pending job=%s: %s", job_id, exc)
        for undo in range(0, len(item_ids), _UNDO_CHUNK):
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
