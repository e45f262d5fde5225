"""workers.helpers: the threads that read and decode inputs yield the CPU to the model's."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from jobs.settings import Settings
from workers.helpers import HELPER_NICENESS, decode_threads_per_slot, helper_pool

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="a nice value is per thread only on Linux"
)


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux_only
def test_helper_threads_run_below_the_thread_that_made_them() -> None:
    before = _priority()
    if before > 19 - HELPER_NICENESS:
        pytest.skip(f"this process already runs at nice {before}: no room below it to check")
    with helper_pool(2, "test-helper") as pool:
        names_and_priorities = set(
            pool.map(lambda _: (threading.current_thread().name, _priority()), range(8))
        )
    assert {p for _, p in names_and_priorities} == {before + HELPER_NICENESS}
    assert all(name.startswith("test-helper") for name, _ in names_and_priorities)
    assert _priority() == before  # only the pool's threads, not the caller nor the process


@pytest.mark.parametrize(
    ("configured", "slots", "cores", "per_slot"),
    [
        (0, 2, 2, 1),  # this 2-core machine's default: one each, the model keeps a core
        (0, 1, 2, 2),
        (0, 2, 16, 4),  # capped: more threads add GIL contention faster than speed
        (0, 8, 2, 1),
        (6, 2, 2, 3),  # the operator's total, split between the slots
        (1, 4, 16, 1),
    ],
)
def test_decode_threads_per_slot(configured: int, slots: int, cores: int, per_slot: int) -> None:
    assert decode_threads_per_slot(configured, slots, cores) == per_slot


def test_the_setting_is_the_workers_total(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAVA_BATCH_DECODE_THREADS", "6")
    assert Settings.from_env().decode_threads == 6
    monkeypatch.setenv("LLAVA_BATCH_DECODE_THREADS", "-1")
    with pytest.raises(ValueError, match="decode_threads"):
        Settings.from_env()
