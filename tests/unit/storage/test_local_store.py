from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import (
    AccessDeniedError,
    InvalidUriError,
    LocalStore,
    ObjectNotFoundError,
    StorageError,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    root = tmp_path / "store"
    root.mkdir()
    return LocalStore(root)


def test_roundtrip_and_uri(store: LocalStore) -> None:
    uri = store.write_bytes("a/b/c.jpg", b"hello")
    assert uri == (store.root / "a/b/c.jpg").as_uri()
    assert uri.startswith("file:///")
    assert store.uri_for("a/b/c.jpg") == uri
    assert store.read_bytes("a/b/c.jpg") == b"hello"
    assert store.exists("a/b/c.jpg")
    assert not store.exists("a/b/missing.jpg")


def test_zero_bytes(store: LocalStore) -> None:
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""


def test_missing_is_not_found(store: LocalStore) -> None:
    with pytest.raises(ObjectNotFoundError) as info:
        store.read_bytes("nope/x.jpg")
    assert info.value.code == "input_not_found"
    store.write_bytes("dir/x", b"1")
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("dir/x/y")  # a file used as a directory


def test_write_replaces_atomically(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_bytes("k", b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError):
        store.write_bytes("k", b"new")
    monkeypatch.undo()
    # The old content survives a failed write and no temp file is left behind.
    assert store.read_bytes("k") == b"old"
    assert sorted(p.name for p in store.root.iterdir()) == ["k"]
    store.write_bytes("k", b"new")
    assert store.read_bytes("k") == b"new"
    assert sorted(p.name for p in store.root.iterdir()) == ["k"]


@pytest.mark.parametrize(
    "key",
    ["../outside", "a/../../outside", "/etc/passwd", "a/..", "a\x00b", "", "dir/"],
)
def test_refuses_bad_keys(store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidUriError) as info:
        store.read_bytes(key)
    assert info.value.code == "invalid_uri"
    with pytest.raises(InvalidUriError):
        store.write_bytes(key, b"x")


def test_refuses_symlink_escape(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (store.root / "linkdir").symlink_to(outside, target_is_directory=True)
    (store.root / "linkfile").symlink_to(outside / "secret")
    for key in ("linkdir/secret", "linkfile"):
        with pytest.raises(InvalidUriError):
            store.read_bytes(key)
        with pytest.raises(InvalidUriError):
            store.write_bytes(key, b"overwrite")
    assert (outside / "secret").read_bytes() == b"secret"
    # Listing never follows symlinks either.
    assert list(store.list_objects()) == []


def test_symlink_inside_root_is_allowed(store: LocalStore) -> None:
    store.write_bytes("real/x", b"1")
    (store.root / "alias").symlink_to(store.root / "real", target_is_directory=True)
    assert store.read_bytes("alias/x") == b"1"


def test_list_prefix_semantics(store: LocalStore) -> None:
    for key in ("a/1.jpg", "a/2.jpg", "a/sub/3.jpg", "ab/4.jpg", "b.jpg"):
        store.write_bytes(key, key.encode())
    assert [o.key for o in store.list_objects()] == [
        "a/1.jpg",
        "a/2.jpg",
        "a/sub/3.jpg",
        "ab/4.jpg",
        "b.jpg",
    ]
    assert [o.key for o in store.list_objects("a/")] == ["a/1.jpg", "a/2.jpg", "a/sub/3.jpg"]
    assert [o.key for o in store.list_objects("a")] == [
        "a/1.jpg",
        "a/2.jpg",
        "a/sub/3.jpg",
        "ab/4.jpg",
    ]
    assert [o.key for o in store.list_objects("a/sub/3")] == ["a/sub/3.jpg"]
    assert list(store.list_objects("missing/")) == []
    info = next(iter(store.list_objects("b")))
    assert info.uri == store.uri_for("b.jpg")
    assert info.size == len(b"b.jpg")


def test_list_skips_temp_files_and_refuses_escape(store: LocalStore) -> None:
    store.write_bytes("x", b"1")
    (store.root / ".x.abc.tmp").write_bytes(b"partial")
    assert [o.key for o in store.list_objects()] == ["x"]
    with pytest.raises(InvalidUriError):
        store.list_objects("../")


def test_etag_is_mtime_size_stamp(store: LocalStore) -> None:
    store.write_bytes("k", b"12345")
    stat = (store.root / "k").stat()
    [info] = store.list_objects()
    assert info.etag == f"{stat.st_mtime_ns}-5"
    os.utime(store.root / "k", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    [changed] = store.list_objects()
    assert changed.etag != info.etag


def test_permission_denied(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_bytes("k", b"1")
    target = store.root / "k"
    # Tests may run as root, which ignores file modes: raise what the OS raises for others.
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(AccessDeniedError) as info:
        store.read_bytes("k")
    assert info.value.code == "input_access_denied"
