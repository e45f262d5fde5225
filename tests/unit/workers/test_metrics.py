"""The metrics server's port choice and the recording hooks (no services); the scrapes of real
processes are in tests/integration/cli/test_cli_metrics.py and
tests/integration/workers/test_metrics_end_to_end.py."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from jobs import metrics as served
from jobs.settings import Settings
from jobs.sweeper import SweepReport
from tests.helpers import free_ports
from workers import metrics


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
    start = free_ports(3)
    with _taken(start):
        used = served.start_metrics_server(start, tries=3, registry=_registry())
    assert used == start + 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{used}/metrics", timeout=5).read()
    assert b"probe_total 1.0" in body


def test_every_port_taken_serves_nothing_and_does_not_raise() -> None:
    start = free_ports(2)
    with _taken(start), _taken(start + 1):
        assert served.start_metrics_server(start, tries=2, registry=_registry()) is None


def test_port_zero_turns_metrics_off() -> None:
    assert served.start_metrics_server(0) is None


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_hooks_record_items_durations_tokens_and_sweeper_actions() -> None:
    before = _value("llava_batch_items_total", kind="caption", status="failed")
    batches = _value("llava_batch_batch_duration_seconds_count", kind="caption")
    tokens = _value("llava_batch_tokens_generated_total")
    requeued = _value("llava_batch_sweeper_actions_total", action="requeued")
    finalised = _value("llava_batch_sweeper_actions_total", action="finalised")

    metrics.record_batch("caption", 1.5, 3, ["image_decode_error", "prompt_too_long"], 0)
    metrics.record_generate(0.2, tokens_out=17, tokens_in=40)
    served.record_sweep(SweepReport(requeued=4, finalised=1))

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


def test_failures_are_counted_by_error_code_from_workers_and_sweepers() -> None:
    def failures(code: str) -> float:
        return _value("llava_batch_item_failures_total", code=code)

    decode, lost = failures("image_decode_error"), failures("worker_lost")
    metrics.record_batch("caption", 0.5, 1, ["image_decode_error", "image_decode_error"], 0)
    served.record_sweep(SweepReport(failed_worker_lost=3, requeued=1))
    assert failures("image_decode_error") == decode + 2
    assert failures("worker_lost") == lost + 3
    assert _value("llava_batch_items_total", kind="caption", status="failed") >= 2


def test_the_model_info_names_model_revision_and_quantization() -> None:
    metrics.record_model("llava-hf/llava-1.5-7b-hf", "a272c74", "4bit")
    labels = {"model": "llava-hf/llava-1.5-7b-hf", "revision": "a272c74", "quantization": "4bit"}
    assert REGISTRY.get_sample_value("llava_batch_model_info", labels) == 1
    metrics.record_model("tiny-llava", None, "none")  # an unknown revision is empty
    labels = {"model": "tiny-llava", "revision": "", "quantization": "none"}
    assert REGISTRY.get_sample_value("llava_batch_model_info", labels) == 1


def test_a_fixed_metrics_port_that_is_taken_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "_served", [])  # as in a fresh process
    port = free_ports(2)
    settings = Settings(metrics_port=port, metrics_port_fixed=True)
    with _taken(port), pytest.raises(served.MetricsPortTakenError) as refused:
        served.serve_metrics(settings)
    assert refused.value.code == "metrics_port_taken"
    assert str(port) in refused.value.message
    assert served._served == []  # nothing served: not the next port either
    with socket.socket() as probe:  # and nothing listens on the next port
        assert probe.connect_ex(("127.0.0.1", port + 1)) != 0
