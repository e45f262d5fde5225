"""Forcing a race: one side paused at a real point (``jobs.hooks``), the other run in that
window, on a real database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from jobs.hooks import pause_at


class Interleaving:
    """Runs ``first``; when it reaches ``point``, runs ``second`` in another thread and gives it
    ``window`` seconds (to commit, or to block on first's locks) before ``first`` goes on."""

    def __init__(self, point: str, window: float = 1.0, *, hold: float = 0.0) -> None:
        self.point = point
        self.window = window
        self.hold = hold  # the least time ``first`` stays paused
        self.second_blocked: bool | None = None
        self._second: threading.Thread | None = None
        self._results: dict[str, Any] = {}

    def _run(self, name: str, fn: Callable[[], Any]) -> None:
        try:
            self._results[name] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            self._results[name] = exc

    def run(self, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
        def hook() -> None:
            if self._second is not None:
                return  # only the first time the point is reached
            self._second = threading.Thread(target=self._run, args=("second", second))
            started = time.monotonic()
            self._second.start()
            self._second.join(self.window)
            self.second_blocked = self._second.is_alive()
            time.sleep(max(0.0, self.hold - (time.monotonic() - started)))

        with pause_at(self.point, hook):
            self._run("first", first)
        assert self._second is not None, f"{self.point} was never reached"
        self._second.join(60)
        assert not self._second.is_alive(), "the second side never finished"
        for value in self._results.values():
            if isinstance(value, BaseException):
                raise value
        return self._results["first"], self._results["second"]
