"""Routing URIs to stores: our own input store plus read/list access to any s3:// bucket."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from storage.base import BlobStore, ObjectInfo
from storage.errors import InvalidUriError, SchemeNotAllowedError
from storage.local import LocalStore
from storage.s3 import S3Store, build_s3_client
from storage.uri import is_s3_uri, parse_s3_uri, uri_scheme

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Where put_content_addressed stores inputs, inside the store.
_CONTENT_ADDRESSED = "inputs/sha256"
# A suffix is cosmetic (callers pass Path.suffix, e.g. ".jpg", or odd ones like ".v2 final"):
# refuse only what could add a path segment or break a key.
_SUFFIX_RE = re.compile(r"[^/\\\x00-\x1f\x7f]{0,32}")
# The keys put_content_addressed writes: inputs/sha256/ab/<sha256 hex, ab...><suffix>.
_STORED_KEY_RE = re.compile(
    re.escape(_CONTENT_ADDRESSED) + r"/([0-9a-f]{2})/(\1[0-9a-f]{62})" + _SUFFIX_RE.pattern
)


@dataclass(frozen=True)
class StoredBlob:
    """Where content-addressed input bytes were stored, and what they hash to."""

    uri: str
    sha256: str
    size: int


class Blobs:
    """Routes URIs to stores: our own input store (from STORAGE_URL) plus read/list access to
    any s3:// bucket (a user's catalogue)."""

    def __init__(
        self, store: BlobStore, s3_client_factory: Callable[[], Any] = build_s3_client
    ) -> None:
        self._store = store
        self._s3_client_factory = s3_client_factory
        self._s3_client: S3Client | None = None
        self._area_uri: str | None = None
        # Worker thread pools may race to build the client; build it exactly once.
        self._lock = threading.Lock()

    @property
    def store(self) -> BlobStore:
        return self._store

    def put_content_addressed(self, data: bytes, suffix: str = "") -> StoredBlob:
        """Store ``data`` under its sha256; the same bytes submitted twice are stored once."""
        if not _SUFFIX_RE.fullmatch(suffix):
            raise InvalidUriError(f"{suffix!r} is not a valid file suffix.")
        digest = hashlib.sha256(data).hexdigest()
        key = f"{_CONTENT_ADDRESSED}/{digest[:2]}/{digest}{suffix}"
        # Check-then-write races are harmless: concurrent writers store identical bytes.
        if self._store.exists(key):
            uri = self._store.uri_for(key)
        else:
            uri = self._store.write_bytes(key, data)
        return StoredBlob(uri=uri, sha256=digest, size=len(data))

    def holds(self, uri: str) -> bool:
        """Whether ``uri`` names an input stored in our own store by ``put_content_addressed``
        (what a submit stored), as opposed to any other object a URI can name."""
        return uri.startswith(self._area())

    def delete_stored(self, uris: Iterable[str]) -> None:
        """Delete inputs that ``put_content_addressed`` stored, named by their URIs. Refuses
        the whole call (deleting nothing) if any URI is not one ``holds`` is true for, or does
        not have the shape of a stored input's key: a user's object, or anything else in the
        store, is never deleted here."""
        keys = []
        for uri in uris:  # all checked before any is deleted
            key = self._stored_key(uri)
            if key is None:
                raise InvalidUriError(
                    f"{uri[:200]!r} is not an input this store holds; nothing was deleted.",
                    uri=uri,
                )
            keys.append(key)
        if keys:
            self._store.delete_many(keys)

    def stored_sha256(self, uri: str) -> str | None:
        """The sha256 of the stored input ``uri`` names, if it names one (an object
        ``put_content_addressed`` wrote to our own store), else None: an item that names such
        an object in place references it as surely as one whose submit stored it."""
        key = self._stored_key(uri)
        match = _STORED_KEY_RE.fullmatch(key) if key is not None else None
        return match.group(2) if match else None

    def _stored_key(self, uri: str) -> str | None:
        if not self.holds(uri):
            return None
        rest = uri[len(self._area()) :]
        if uri_scheme(uri) == "file":  # Path.as_uri() quoted it
            rest = unquote(rest)
        key = f"{_CONTENT_ADDRESSED}/{rest}"
        return key if _STORED_KEY_RE.fullmatch(key) else None

    def _area(self) -> str:
        # The URI prefix of everything put_content_addressed stores; a local store resolves
        # paths to make a URI, so it is made once, not for every URI a collection checks.
        if self._area_uri is None:
            self._area_uri = self._store.uri_for(_CONTENT_ADDRESSED).rstrip("/") + "/"
        return self._area_uri

    def read_uri(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        """Bytes of ``s3://any-bucket/key`` or of a ``file://`` URI inside our local store.

        ``max_bytes``: InputTooLargeError (code ``input_too_large``) for a larger object, judged
        from its size before reading and while streaming it.
        """
        if is_s3_uri(uri):
            bucket, key = parse_s3_uri(uri)
            return S3Store(self._client(), bucket).read_bytes(key, max_bytes=max_bytes)
        scheme = uri_scheme(uri)
        if scheme not in (None, "file"):  # nothing is ever fetched from the network
            raise SchemeNotAllowedError(
                f"{uri[:200]!r}: {scheme}: URIs are never read (workers do not fetch inputs "
                "from the network); only s3:// URIs and stored inputs are.",
                uri=uri,
            )
        return self._local_store(uri).read_file(parse_file_uri(uri), max_bytes=max_bytes)

    def write_uri(self, uri: str, data: bytes | BinaryIO) -> str:
        """Writes ``s3://any-bucket/key`` whole (bytes: one PUT; a file, from its position on:
        one PUT or a multipart upload that S3 shows only once complete). Local folders outside
        our store are written with ``storage.local.atomic_file`` instead."""
        bucket, key = parse_s3_uri(uri)
        store = S3Store(self._client(), bucket)
        if isinstance(data, bytes):
            return store.write_bytes(key, data)
        return store.write_file(key, data)

    def list_uri(self, uri_prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``s3://bucket/prefix`` (keys relative to the bucket) or under a
        ``file://`` directory inside our local store (keys relative to its root), lazily."""
        if is_s3_uri(uri_prefix):
            bucket, prefix = parse_s3_uri(uri_prefix)
            return S3Store(self._client(), bucket).list_objects(prefix)
        local, key = self._local_key(uri_prefix)
        is_dir = key == "" or local.path_for(key).is_dir()
        return local.list_objects(f"{key}/" if is_dir and key else key)

    def _client(self) -> S3Client:
        with self._lock:
            if self._s3_client is None:
                self._s3_client = self._s3_client_factory()
            return self._s3_client

    def _local_key(self, uri: str) -> tuple[LocalStore, str]:
        local = self._local_store(uri)
        return local, local.key_for(parse_file_uri(uri))

    def _local_store(self, uri: str) -> LocalStore:
        # file:// is only ever honoured inside our own local store: a submitted URI must not
        # turn the worker into a reader of arbitrary files on its machine.
        if not isinstance(self._store, LocalStore):
            raise InvalidUriError(f"{uri!r} is not readable: only s3:// URIs are.", uri=uri)
        return self._store


def parse_file_uri(uri: str) -> Path:
    """The absolute local path named by a ``file://`` URI (as made by ``Path.as_uri()``)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise InvalidUriError(f"{uri!r} is not a local file:// URI.", uri=uri)
    if parts.query or parts.fragment or "\x00" in uri:
        raise InvalidUriError(f"{uri!r} is not a plain file path.", uri=uri)
    path = unquote(parts.path)
    if "\x00" in path or not path.startswith("/"):
        raise InvalidUriError(f"{uri!r} is not an absolute file path.", uri=uri)
    return Path(path)


def open_blobs(storage_url: str) -> Blobs:
    """Blobs over ``s3://bucket/prefix`` or a local directory (path or file:// URL, created)."""
    if not storage_url.strip():
        raise InvalidUriError("The storage URL is empty.")
    if is_s3_uri(storage_url):
        bucket, prefix = parse_s3_uri(storage_url)
        client = build_s3_client()
        # One client for our store and for users' buckets alike.
        return Blobs(S3Store(client, bucket, prefix), s3_client_factory=lambda: client)
    if "://" in storage_url and not storage_url.lower().startswith("file://"):
        raise InvalidUriError(f"{storage_url!r} is neither s3:// nor a local path.")
    if storage_url.lower().startswith("file:"):
        root = parse_file_uri(storage_url)
    else:
        root = Path(storage_url).expanduser()
    store = LocalStore(root)
    store.root.mkdir(parents=True, exist_ok=True)
    return Blobs(store)
