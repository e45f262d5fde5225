"""A test-only guard: no slow work runs while a database transaction is open.

Storing or reading an input, loading a model and any call to the broker can take seconds or
minutes; a transaction left open meanwhile holds its locks (on SQLite, the one write lock) and
dies at PostgreSQL's idle-in-transaction limit (docs/design.md#no-slow-work-inside-a-transaction).

``TransactionTracker`` follows every transaction of an engine through SQLAlchemy's connection
events, per thread. Work handed to a thread pool counts as its submitter's: a transaction that
was open when the work was submitted, and is still open when it runs, is one the submitter is
waiting in. The wrappers below (``GuardedBlobs``, ``GuardedPublisher``, ``guarded_loader``) ask
the tracker before each slow call and record a violation, with its stack, instead of raising
(so a violation in a worker's reader thread is not swallowed as that item's failure).
"""

from __future__ import annotations

import itertools
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event

from jobs.dispatch import Publisher
from model.engine import Engine as ModelEngine
from storage import Blobs, BlobStore, ObjectInfo, StoredBlob


class TransactionTracker:
    def __init__(self) -> None:
        self._local = threading.local()
        self._open: set[int] = set()  # tokens of the transactions open now, in any thread
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self.violations: list[str] = []
        self.calls: Counter[str] = Counter()

    # --- following transactions ------------------------------------------------------------

    @contextmanager
    def watching(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        monkeypatch.setattr(
            ThreadPoolExecutor, "submit", self._submitting(ThreadPoolExecutor.submit)
        )
        try:
            yield
        finally:
            event.remove(engine, "begin", self._begin)
            event.remove(engine, "commit", self._end)
            event.remove(engine, "rollback", self._end)

    def _mine(self) -> dict[int, int]:
        if not hasattr(self._local, "open"):
            self._local.open = {}  # id(connection) -> token
            self._local.inherited = frozenset()
        mine: dict[int, int] = self._local.open
        return mine

    def _begin(self, conn: Any) -> None:
        token = next(self._tokens)
        self._mine()[id(conn)] = token
        with self._lock:
            self._open.add(token)

    def _end(self, conn: Any) -> None:
        token = self._mine().pop(id(conn), None)
        with self._lock:
            self._open.discard(token or 0)

    def held(self) -> frozenset[int]:
        """The transactions this thread is inside: its own, and those of whoever handed it the
        work it runs that are still open."""
        own = frozenset(self._mine().values())
        inherited: frozenset[int] = self._local.inherited
        with self._lock:
            return own | (inherited & self._open)

    def _submitting(self, submit: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
        tracker = self

        def patched(
            pool: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
        ) -> Future[Any]:
            held = tracker.held()

            def run() -> Any:
                tracker._mine()
                before = tracker._local.inherited
                tracker._local.inherited = held
                try:
                    return fn(*args, **kwargs)
                finally:
                    tracker._local.inherited = before

            return submit(pool, run)

        return patched

    # --- the check -------------------------------------------------------------------------

    def check(self, what: str) -> None:
        self.calls[what] += 1
        if self.held():
            stack = "".join(traceback.format_stack(limit=14)[:-1])
            self.violations.append(f"{what} inside an open transaction:\n{stack}")


class GuardedBlobs(Blobs):
    """Blobs whose every call to storage is checked: no input stored, read or listed inside a
    transaction."""

    def __init__(self, store: BlobStore, tracker: TransactionTracker) -> None:
        super().__init__(store)
        self.tracker = tracker

    def put_content_addressed(self, data: bytes, suffix: str = "") -> StoredBlob:
        self.tracker.check("store an input")
        return super().put_content_addressed(data, suffix)

    def read_uri(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        self.tracker.check("read an input")
        return super().read_uri(uri, max_bytes=max_bytes)

    def list_uri(self, uri_prefix: str) -> Iterator[ObjectInfo]:
        self.tracker.check("list inputs")
        for found in super().list_uri(uri_prefix):
            yield found
            self.tracker.check("list inputs")


class GuardedPublisher:
    """A publisher (the broker: a network call) whose every call is checked."""

    def __init__(self, inner: Publisher, tracker: TransactionTracker) -> None:
        self.inner, self.tracker = inner, tracker

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.tracker.check("publish")
        self.inner.publish(job_id, item_ids, model=model, dispatched_at=dispatched_at)

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.tracker.check("publish")
        self.inner.ring(model, count, job_id=job_id, dispatched_at=dispatched_at)

    def waiting(self, model: str) -> int | None:
        self.tracker.check("ask the broker")
        return self.inner.waiting(model)

    @property
    def bell_limit(self) -> int:
        return self.inner.bell_limit

    def oldest_waiting(self, model: str) -> datetime | None:
        self.tracker.check("ask the broker")
        return self.inner.oldest_waiting(model)

    def batched(self) -> AbstractContextManager[None]:
        self.tracker.check("publish")
        batched: Callable[[], AbstractContextManager[None]] | None = getattr(
            self.inner, "batched", None
        )
        return batched() if batched is not None else nullcontext()


def guarded_loader(engine: ModelEngine, tracker: TransactionTracker) -> Callable[[], ModelEngine]:
    def load() -> ModelEngine:
        tracker.check("load the model")
        return engine

    return load
