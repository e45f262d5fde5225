"""Named pause points inside the transitions, for deterministic interleaving tests.

A test installs a callable at a point (``with pause_at("record:written", fn)``); the code under
test calls ``reached(name)`` there, so one side can be held at a real point (inside a real
transaction, holding real locks) while the other commits in that window. With nothing installed
a point costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_installed: dict[str, Callable[[], None]] = {}


def reached(name: str) -> None:
    hook = _installed.get(name)
    if hook is not None:
        hook()


@contextmanager
def pause_at(name: str, hook: Callable[[], None]) -> Iterator[None]:
    _installed[name] = hook
    try:
        yield
    finally:
        _installed.pop(name, None)
