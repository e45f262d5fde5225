"""How many inputs a submit stores at once: several for S3's round trips, no more than the
cores for a local folder, where the work is the CPU's."""

import os
from pathlib import Path
from typing import Any, cast

import pytest

from jobs.submit import input_store
from storage import Blobs, LocalStore, S3Store


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_a_local_store_takes_no_more_threads_than_cores(tmp_path: Path) -> None:
    threads = input_store.upload_threads(Blobs(LocalStore(tmp_path)))
    assert threads == min(input_store.UPLOAD_THREADS, _cores())
    assert input_store.local_threads() == threads


def test_s3_keeps_several_uploads_in_flight_whatever_the_cores() -> None:
    store = S3Store(cast(Any, None), "bucket", "inputs")  # no call is made: only its kind counts
    assert input_store.upload_threads(Blobs(store)) == input_store.UPLOAD_THREADS == 8


def test_one_core_stores_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert input_store.upload_threads(Blobs(LocalStore(tmp_path))) == 1
