"""Ringing the bell: publish batch messages (ids only) after the rows are committed.

The message is a doorbell, never the data: losing it costs latency (the sweeper re-publishes),
never an item.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
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
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # kombu raises many types for a dead broker
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
    them queued), in messages of ``batch_size``. On a dead broker the unsent items lose their
    stamp, so the sweeper sends them as soon as it can; returns whether all went out."""
    for start in range(0, len(item_ids), batch_size):
        batch = item_ids[start : start + batch_size]
        try:
            publisher.publish(job_id, batch, model=model, dispatched_at=stamp)
        except DispatchError as exc:
            log.warning("dispatch pending job=%s: %s", job_id, exc)
            undo_dispatch(session_factory, item_ids[start:], stamp=stamp)
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
