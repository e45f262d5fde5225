"""The input byte limit: judged from the stored size before reading, and while streaming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import storage.local
from storage import Blobs, InputTooLargeError, LocalStore, StorageError
from storage.limits import CHUNK_BYTES, read_limited


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    (tmp_path / "store").mkdir()
    return LocalStore(tmp_path / "store")


def test_limit_is_inclusive(store: LocalStore) -> None:
    store.write_bytes("a.bin", b"x" * 100)
    assert store.read_bytes("a.bin", max_bytes=100) == b"x" * 100
    with pytest.raises(InputTooLargeError) as info:
        store.read_bytes("a.bin", max_bytes=99)
    error = info.value
    assert isinstance(error, StorageError) and error.code == "input_too_large"
    assert "100 bytes" in str(error) and "99 bytes" in str(error)
    assert error.uri == store.uri_for("a.bin")
    assert store.read_bytes("a.bin") == b"x" * 100  # no limit by default


def test_zero_bytes_within_any_limit(store: LocalStore) -> None:
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty", max_bytes=0) == b""


def test_huge_file_is_refused_from_its_size_without_reading(store: LocalStore) -> None:
    # A sparse 64 GiB file: reading any real part of it would be slow and huge.
    path = store.root / "huge.bin"
    with path.open("wb") as f:
        f.truncate(64 * 2**30)
    with pytest.raises(InputTooLargeError, match=str(64 * 2**30)):
        store.read_bytes("huge.bin", max_bytes=2**20)


def test_a_file_larger_than_its_stat_size_stops_at_the_limit(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file grows (or lies) after the size check: the streaming read still stops.
    store.write_bytes("grows.bin", b"y" * (3 * CHUNK_BYTES))
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 10, *st[7:]))

    monkeypatch.setattr(storage.local.os, "fstat", small_fstat)
    with pytest.raises(InputTooLargeError, match="at least"):
        store.read_bytes("grows.bin", max_bytes=CHUNK_BYTES)
    assert store.read_bytes("grows.bin", max_bytes=3 * CHUNK_BYTES) == b"y" * (3 * CHUNK_BYTES)


def test_missing_file_with_a_limit_is_still_not_found(store: LocalStore) -> None:
    with pytest.raises(StorageError) as info:
        store.read_bytes("missing.bin", max_bytes=10)
    assert info.value.code == "input_not_found"


class EndlessStream:
    """A reader that never ends (like /dev/zero), recording how much it handed out."""

    def __init__(self) -> None:
        self.handed_out = 0

    def read(self, size: int) -> bytes:
        self.handed_out += size
        return b"\0" * size


@pytest.mark.parametrize("expected", [None, 0, 1000, 5 * CHUNK_BYTES])
def test_streaming_read_stops_one_chunk_past_the_limit(expected: int | None) -> None:
    stream = EndlessStream()
    limit = 2 * CHUNK_BYTES + 17
    with pytest.raises(InputTooLargeError):
        read_limited(stream.read, expected=expected, max_bytes=limit, uri="s3://b/k")
    assert stream.handed_out <= limit + CHUNK_BYTES


def test_streaming_read_returns_everything_under_the_limit() -> None:
    chunks = [b"ab", b"cde", b""]
    assert read_limited(lambda _n: chunks.pop(0), expected=None, max_bytes=5, uri="u") == b"abcde"


def test_blobs_read_uri_passes_the_limit(tmp_path: Path) -> None:
    blobs = Blobs(LocalStore(tmp_path))
    stored = blobs.put_content_addressed(b"z" * 50, suffix=".png")
    assert blobs.read_uri(stored.uri, max_bytes=50) == b"z" * 50
    with pytest.raises(InputTooLargeError):
        blobs.read_uri(stored.uri, max_bytes=49)
