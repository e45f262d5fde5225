"""Keeps a batch's lease alive while the worker is busy with it (a heartbeat)."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from jobs.db import SessionFactory
from jobs.lifecycle import renew_lease
from workers import metrics

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease every third of its length from a background thread, on a timer: not
    when a step of the batch ends, so one step longer than the whole lease (a generate call)
    keeps it. The pipeline enters it before the claim, with the token the claim will stamp
    (renewing nothing until then), so the claim's own retries are covered too.

    If the process is paused (SIGSTOP) or dies, renewal stops with it and the sweeper takes the
    items back; a renewal that fails (database down) is retried at the next beat.
    """

    def __init__(self, session_factory: SessionFactory, lease_token: str, lease_seconds: int):
        self._session_factory = session_factory
        self._token = lease_token
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = self._lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                renewed = renew_lease(
                    self._session_factory, self._token, lease_seconds=self._lease_seconds
                )
                log.debug("lease renewed token=%s items=%d", self._token, renewed)
                metrics.record_lease_renewal(ok=True)
            except Exception as exc:  # the next beat tries again; the lease is the safety net
                log.warning("lease renewal failed: %s", exc)
                metrics.record_lease_renewal(ok=False)
