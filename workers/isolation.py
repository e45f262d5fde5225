"""Which messages a worker's slots may run side by side.

Slots share one process, so an input that kills the process (the OOM killer, a crash in native
code) takes every slot's batch down with it, and each of their items spends an attempt. The
sweeper already sends an item that lost a worker out alone, so that if it is the killer it
takes no innocent batch-mates with it again; here such a message also runs alone in the
worker: it waits until the other slots are done, and no other slot claims anything until it is
done. A message waiting its turn has claimed nothing yet, so a crash costs it nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Isolation:
    """A shared/exclusive gate over the slots; a message waiting to run alone goes first."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._side_by_side = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def turn(self, *, alone: bool) -> Iterator[None]:
        with self._changed:
            if alone:
                self._waiting_alone += 1
                self._changed.wait_for(lambda: not self._alone and self._side_by_side == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._changed.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._side_by_side += 1
        try:
            yield
        finally:
            with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._side_by_side -= 1
                self._changed.notify_all()
