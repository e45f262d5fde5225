"""Ringing the bell: publish batch messages (ids only) after the rows are committed.

The message is a doorbell, never the data: losing it costs latency (the sweeper re-publishes),
never an item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

RUN_BATCH_TASK = "llava_batch.run_batch"
SWEEP_TASK = "llava_batch.sweep"


class DispatchError(Exception):
    """Raised when the broker cannot take a message; the rows stay queued for the sweeper."""

    code = "dispatch_pending"


class Publisher(Protocol):
    def publish(self, job_id: str, item_ids: Sequence[str]) -> None: ...

    def pending(self) -> int | None:
        """Messages waiting in the broker, or None when that cannot be known."""
        ...


class CeleryPublisher:
    """Publishes by task name, so the producer never imports the worker (or torch)."""

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

    def publish(self, job_id: str, item_ids: Sequence[str]) -> None:
        try:
            self.app.send_task(
                RUN_BATCH_TASK,
                kwargs={"job_id": job_id, "item_ids": list(item_ids)},
                queue=self.queue,
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # kombu raises many types for a dead broker
            raise DispatchError(f"The broker at {_redact(self.broker_url)} is unreachable") from exc

    def pending(self) -> int | None:
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return None
        try:
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            try:
                return int(client.llen(self.queue))
            finally:
                client.close()
        except Exception:
            return None


class CallbackPublisher:
    """Hands batches to a function in this process: the embedded one-process mode and tests."""

    def __init__(self, callback: Callable[[str, list[str]], None]) -> None:
        self._callback = callback

    def publish(self, job_id: str, item_ids: Sequence[str]) -> None:
        self._callback(job_id, list(item_ids))

    def pending(self) -> int | None:
        return None


def _redact(url: str) -> str:
    # Credentials never reach logs or the terminal.
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
