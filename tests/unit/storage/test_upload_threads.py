"""How many inputs a submit stores at once: several for S3's round trips, no more than the
cores for a local folder, where the work is the CPU's."""

import os
from pathlib import Path
from typing import Any, cast

import pytest

from jobs.submit import input_store
from storage import Blobs, LocalStore, S3Store


def _cores(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(count)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: count)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (3, 3), (16, 8)])
def test_a_local_store_takes_no_more_threads_than_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    _cores(monkeypatch, cores)
    assert input_store.upload_threads(Blobs(LocalStore(tmp_path))) == threads
    assert input_store.local_threads() == threads


def test_s3_keeps_several_uploads_in_flight_whatever_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cores(monkeypatch, 1)
    store = S3Store(cast(Any, None), "bucket", "inputs")  # no call is made: only its kind counts
    assert input_store.upload_threads(Blobs(store)) == input_store.UPLOAD_THREADS == 8
