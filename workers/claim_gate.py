"""Claims a worker may still begin, for the one-process runner's stop.

A second Ctrl-C hands back what the run holds and ends the process at once. A slot thread that
was inside its claim at that moment would commit it after the hand-back, and its items would
stay ``running`` until their lease runs out. So slots claim through this gate, and the runner
closes it before handing back: closing waits out the claims already under way, and nothing is
claimed after it. A Celery worker never closes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ClaimGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open = True
        self._claiming = 0

    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Yields whether this claim may go ahead (False once the gate is closed)."""
        with self._changed:
            allowed = self._open
            self._claiming += allowed
        try:
            yield allowed
        finally:
            if allowed:
                with self._changed:
                    self._claiming -= 1
                    self._changed.notify_all()

    @property
    def is_open(self) -> bool:
        with self._changed:
            return self._open

    def close(self, timeout: float) -> bool:
        """Lets no claim begin, and waits up to ``timeout`` for those under way to end; False
        when one was still under way (retrying a database blip, say) at the timeout."""
        with self._changed:
            self._open = False
            return self._changed.wait_for(lambda: self._claiming == 0, timeout)
