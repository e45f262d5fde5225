"""The one small interface every blob store implements (S3, local directory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object; listing never downloads content."""

    uri: str  # full URI: s3://bucket/key or file:///abs/path
    key: str  # key relative to the listed store (or bucket, for a foreign s3:// listing)
    size: int
    # S3 ETag without quotes; local files use a cheap f"{mtime_ns}-{size}" stamp (no hashing).
    etag: str


class BlobStore(Protocol):
    """Keyed bytes. Keys are ``/``-separated and never contain ``..`` segments or NUL bytes."""

    def uri_for(self, key: str) -> str:
        """The full URI that names ``key`` in this store (no I/O)."""
        ...

    def write_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (replacing it atomically) and return its URI."""
        ...

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole content of ``key``; ObjectNotFoundError when it does not exist.

        With ``max_bytes``, InputTooLargeError for an object over that many bytes: judged from
        its stored size before reading, then while streaming (never holding more than the limit
        plus one chunk).
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` names an object."""
        ...

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a string prefix, as in S3), lazily."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the objects named by ``keys``; a key that names nothing is not an error (a
        delete tried again after a crash finds it gone). Raises if any could not be deleted."""
        ...
