"""A worker caps glibc's malloc arenas (``workers/malloc.py``): threads then share two arenas
rather than each taking one of its own, which is what made a worker's memory creep up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.malloc import cap_arenas

ROOT = Path(__file__).resolve().parents[3]

# Eight threads, alive at once, each allocating with malloc; then glibc reports its arenas.
_THREADS = """
import ctypes, sys, threading
from workers.malloc import cap_arenas
if sys.argv[1] == "capped":
    assert cap_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
barrier = threading.Barrier(9)
def work():
    blocks = [libc.malloc(512) for _ in range(100)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()
report = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(report))
libc.fclose(ctypes.c_void_p(report))
barrier.wait()
"""

needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="malloc arenas are glibc's; this machine has no glibc",
)


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    subprocess.run(
        [sys.executable, "-c", _THREADS, mode, str(report)], cwd=ROOT, env=env, check=True
    )
    return report.read_text().count("<heap nr=")


@needs_glibc
def test_threads_share_two_arenas_once_capped(tmp_path: Path) -> None:
    assert _arenas(tmp_path, "default") > 2  # each thread its own: the control
    assert _arenas(tmp_path, "capped") <= 2


def test_an_operators_malloc_arena_max_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_arenas() is False
