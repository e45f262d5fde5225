"""The least-recently-used cache that keeps an engine's compiled grammars (``model.lru``)."""

from __future__ import annotations

import pytest

from model.lru import LruCache


def test_the_cache_keeps_at_most_its_size_and_drops_the_least_recently_used() -> None:
    lookups: list[bool] = []
    cache: LruCache[str, str] = LruCache(2, on_lookup=lookups.append)
    built: list[str] = []

    def get(key: str) -> str:
        return cache.get_or_build(key, lambda: built.append(key) or key.upper())

    assert [get("a"), get("b"), get("a")] == ["A", "B", "A"]  # a is now the most recent
    get("c")  # full: b, the least recently used, goes
    assert len(cache) == 2 and "a" in cache and "c" in cache and "b" not in cache
    get("b")  # compiled again; a goes now (c was used after it)
    assert "a" not in cache and built == ["a", "b", "c", "b"]
    assert (cache.hits, cache.misses) == (1, 4)
    assert lookups == [False, False, True, False, False]


def test_what_fails_to_build_is_not_kept() -> None:
    cache: LruCache[str, int] = LruCache(4)

    def fail() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        cache.get_or_build("bad", fail)
    assert len(cache) == 0 and cache.misses == 1
    with pytest.raises(ValueError):
        LruCache(0)


def test_three_thousand_schemas_leave_at_most_the_bound() -> None:
    cache: LruCache[int, bytes] = LruCache(128)
    for key in range(3000):
        cache.get_or_build(key, lambda: b"grammar")
    assert len(cache) == 128 and cache.misses == 3000
    assert 2999 in cache and 2871 not in cache
