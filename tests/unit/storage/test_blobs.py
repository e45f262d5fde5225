from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import storage.blobs
from storage import (
    Blobs,
    InvalidUriError,
    LocalStore,
    ObjectNotFoundError,
    S3Store,
    open_blobs,
)


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0

    def write_bytes(self, key: str, data: bytes) -> str:
        self.writes += 1
        return super().write_bytes(key, data)


def _no_s3() -> Any:
    raise AssertionError("local operations must not build an S3 client")


@pytest.fixture
def blobs(tmp_path: Path) -> Blobs:
    (tmp_path / "store").mkdir()
    return Blobs(CountingStore(tmp_path / "store"), s3_client_factory=_no_s3)


def test_put_content_addressed_dedups(blobs: Blobs) -> None:
    store = blobs.store
    assert isinstance(store, CountingStore)
    digest = hashlib.sha256(b"image").hexdigest()
    first = blobs.put_content_addressed(b"image", suffix=".jpg")
    second = blobs.put_content_addressed(b"image", suffix=".jpg")
    assert first == second
    assert first.sha256 == digest
    assert first.size == 5
    assert first.uri == store.uri_for(f"inputs/sha256/{digest[:2]}/{digest}.jpg")
    assert store.writes == 1
    assert blobs.read_uri(first.uri) == b"image"


@pytest.mark.parametrize("suffix", ["/../x", "a/b", ".a\\b", ".jp\x00g", ".j\npg", "." + "x" * 40])
def test_put_content_addressed_refuses_bad_suffix(blobs: Blobs, suffix: str) -> None:
    with pytest.raises(InvalidUriError):
        blobs.put_content_addressed(b"x", suffix=suffix)


@pytest.mark.parametrize("suffix", ["", ".jpg", ".tar.gz", ".v2 final", ".jpeg~"])
def test_put_content_addressed_accepts_odd_suffixes(blobs: Blobs, suffix: str) -> None:
    stored = blobs.put_content_addressed(b"x", suffix=suffix)
    key = f"inputs/sha256/{stored.sha256[:2]}/{stored.sha256}{suffix}"
    assert stored.uri == blobs.store.uri_for(key)
    assert blobs.read_uri(stored.uri) == b"x"


def test_read_uri_inside_root(blobs: Blobs) -> None:
    uri = blobs.store.write_bytes("dir/with space%.jpg", b"ok")
    assert blobs.read_uri(uri) == b"ok"
    with pytest.raises(ObjectNotFoundError):
        blobs.read_uri(blobs.store.uri_for("dir/missing.jpg"))


def test_read_uri_refuses_file_outside_root(blobs: Blobs, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    store = blobs.store
    assert isinstance(store, LocalStore)
    (store.root / "link").symlink_to(secret)
    for uri in (
        secret.as_uri(),
        "file:///etc/passwd",
        store.root.as_uri() + "/../secret.txt",
        (store.root / "link").as_uri(),
        "file://otherhost" + str(secret),
        str(secret),  # a bare path is not a URI
        "relative/path.jpg",
        "https://example.com/x.jpg",
        store.root.as_uri() + "/x.jpg?q=1",
        store.root.as_uri(),  # the store itself is not an object
    ):
        with pytest.raises(InvalidUriError):
            blobs.read_uri(uri)


def test_read_uri_file_refused_when_store_is_s3(tmp_path: Path) -> None:
    blobs = Blobs(S3Store(object(), "bucket"), s3_client_factory=_no_s3)  # type: ignore[arg-type]
    with pytest.raises(InvalidUriError):
        blobs.read_uri((tmp_path / "x").as_uri())


def test_list_uri_local_directory(blobs: Blobs) -> None:
    for key in ("cat/a.jpg", "cat/b.jpg", "catalogue/c.jpg"):
        blobs.store.write_bytes(key, b"x")
    store = blobs.store
    assert isinstance(store, LocalStore)
    listed = list(blobs.list_uri((store.root / "cat").as_uri()))
    assert [o.key for o in listed] == ["cat/a.jpg", "cat/b.jpg"]
    assert [o.key for o in blobs.list_uri(store.root.as_uri())] == [
        "cat/a.jpg",
        "cat/b.jpg",
        "catalogue/c.jpg",
    ]
    with pytest.raises(InvalidUriError):
        blobs.list_uri(store.root.parent.as_uri())


def test_invalid_s3_uri_refused_before_building_client(blobs: Blobs) -> None:
    for uri in ("s3://bucket/../x", "s3:///key", "s3://bucket/a\x00b"):
        with pytest.raises(InvalidUriError):
            blobs.read_uri(uri)
        with pytest.raises(InvalidUriError):
            blobs.list_uri(uri)


def test_open_blobs_local_path(tmp_path: Path) -> None:
    root = tmp_path / "new" / "store"
    blobs = open_blobs(str(root))
    assert isinstance(blobs.store, LocalStore)
    assert blobs.store.root == root.resolve()
    assert root.is_dir()


def test_open_blobs_file_url(tmp_path: Path) -> None:
    root = tmp_path / "via url"
    blobs = open_blobs(root.as_uri())
    assert isinstance(blobs.store, LocalStore)
    assert blobs.store.root == root.resolve()
    assert root.is_dir()


def test_open_blobs_s3_builds_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []

    def fake_client() -> object:
        built.append(object())
        return built[-1]

    monkeypatch.setattr(storage.blobs, "build_s3_client", fake_client)
    blobs = open_blobs("s3://my-bucket/some/prefix/")
    assert isinstance(blobs.store, S3Store)
    assert blobs.store.bucket == "my-bucket"
    assert blobs.store.uri_for("k.jpg") == "s3://my-bucket/some/prefix/k.jpg"
    assert blobs.store.client is built[0]
    assert blobs._client() is built[0]  # user buckets share the store's client
    assert len(built) == 1


@pytest.mark.parametrize("url", ["", "  ", "http://x/y", "gs://bucket/x", "s3:///x"])
def test_open_blobs_refuses(url: str) -> None:
    with pytest.raises(InvalidUriError):
        open_blobs(url)
