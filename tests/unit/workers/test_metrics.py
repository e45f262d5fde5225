"""The metrics server's port choice and the recording hooks (no services)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from jobs.sweeper import SweepReport
from workers import metrics


def _free_run(length: int) -> int:
    """A port starting ``length`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + length < 65536 and all(_is_free(start + i) for i in range(length)):
            return start
    raise AssertionError("no run of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@contextmanager
def _taken(port: int) -> Iterator[None]:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        yield


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("probe_total", "A probe.", registry=registry).inc()
    return registry


def test_a_taken_port_falls_back_to_the_next_free_one() -> None:
    start = _free_run(3)
    with _taken(start):
        used = metrics.start_metrics_server(start, tries=3, registry=_registry())
    assert used == start + 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{used}/metrics", timeout=5).read()
    assert b"probe_total 1.0" in body


def test_every_port_taken_serves_nothing_and_does_not_raise() -> None:
    start = _free_run(2)
    with _taken(start), _taken(start + 1):
        assert metrics.start_metrics_server(start, tries=2, registry=_registry()) is None


def test_port_zero_turns_metrics_off() -> None:
    assert metrics.start_metrics_server(0) is None


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_hooks_record_items_durations_tokens_and_sweeper_actions() -> None:
    before = _value("llava_batch_items_total", kind="caption", status="failed")
    batches = _value("llava_batch_batch_duration_seconds_count", kind="caption")
    tokens = _value("llava_batch_tokens_generated_total")
    requeued = _value("llava_batch_sweeper_actions_total", action="requeued")
    finalised = _value("llava_batch_sweeper_actions_total", action="finalised")

    metrics.record_batch("caption", 1.5, succeeded=3, failed=2, released=0)
    metrics.record_generate(0.2, tokens_out=17, tokens_in=40)
    metrics.record_sweep(SweepReport(requeued=4, finalised=1))

    assert _value("llava_batch_items_total", kind="caption", status="failed") == before + 2
    assert _value("llava_batch_batch_duration_seconds_count", kind="caption") == batches + 1
    assert _value("llava_batch_tokens_generated_total") == tokens + 17
    assert _value("llava_batch_sweeper_actions_total", action="requeued") == requeued + 4
    assert _value("llava_batch_sweeper_actions_total", action="finalised") == finalised + 1


def test_queue_depth_is_read_at_scrape_time_and_nan_when_unreachable() -> None:
    depth: list[int | None] = [5]
    metrics.watch_queue_depth("q-test", lambda: depth[0])
    assert _value("llava_batch_queue_depth", queue="q-test") == 5
    depth[0] = None
    value = REGISTRY.get_sample_value("llava_batch_queue_depth", {"queue": "q-test"})
    assert value is not None and value != value  # NaN


def test_grammar_cache_lookups_are_counted_by_result() -> None:
    def value(result: str) -> float:
        found = REGISTRY.get_sample_value(
            "llava_batch_grammar_cache_lookups_total", {"result": result}
        )
        return found or 0.0

    hits, misses = value("hit"), value("miss")
    metrics.record_grammar_lookup(False)
    metrics.record_grammar_lookup(True)
    metrics.record_grammar_lookup(True)
    assert (value("hit") - hits, value("miss") - misses) == (2, 1)
