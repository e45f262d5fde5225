"""A least-recently-used cache of a fixed number of entries, with its hits and misses counted.

Not locked: its owner calls it under its own lock. ``on_lookup`` (hit: True) lets the owner's
owner count lookups where it keeps its metrics, without this package importing theirs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(
        self, max_entries: int, *, on_lookup: Callable[[bool], None] | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"a cache holds at least one entry (got {max_entries})")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._on_lookup = on_lookup

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        """The entry for ``key``, built (and the least recently used one dropped, when full)
        if it is not there. What ``build`` raises is raised, and nothing is stored."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self._count(hit=True)
            return self._entries[key]
        self._count(hit=False)
        value = build()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def _count(self, *, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self._on_lookup is not None:
            self._on_lookup(hit)
