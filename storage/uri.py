"""Pure parsing and validation of ``s3://`` URIs and store keys (no I/O, no boto3)."""

from __future__ import annotations

import re

from storage.errors import InvalidUriError

_S3_SCHEME = "s3://"
# Permissive enough for legacy us-east-1 names (upper case, underscores) and S3-compatible
# servers; strict enough to reject anything that would change the meaning of the URL.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
# S3's own limit on key length, in UTF-8 bytes.
_MAX_KEY_BYTES = 1024
# RFC 3986's scheme, at least two characters so that a Windows drive ("C:") is not one.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def is_s3_uri(s: str) -> bool:
    """True when ``s`` uses the s3:// scheme (validity is checked by ``parse_s3_uri``)."""
    return s[: len(_S3_SCHEME)].lower() == _S3_SCHEME


def uri_scheme(s: str) -> str | None:
    """The scheme of ``s`` in lower case (``"s3"``, ``"https"``, ``"data"``), or None for a plain
    path. A relative path whose first segment holds a colon needs a ``./`` in front."""
    match = _SCHEME_RE.match(s)
    return match.group(1).lower() if match else None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    The key may be empty or end with ``/`` (a prefix to list). Raises ``InvalidUriError`` for a
    non-s3 scheme, an empty or malformed bucket, a NUL byte or a ``..`` key segment.
    """
    if not is_s3_uri(uri):
        raise InvalidUriError(f"{uri!r} is not an s3:// URI.", uri=uri)
    bucket, _, key = uri[len(_S3_SCHEME) :].partition("/")
    if not bucket:
        raise InvalidUriError(f"{uri!r} has no bucket name.", uri=uri)
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidUriError(f"{uri!r} has an invalid bucket name {bucket!r}.", uri=uri)
    validate_key(key, uri=uri)
    return bucket, key


def validate_key(key: str, *, uri: str = "") -> str:
    """Return ``key`` unchanged if it is safe to use in any store, else raise InvalidUriError.

    ``..`` segments are refused even for S3, where they are legal, because the same key may be
    mapped onto a local directory and must never climb out of it.
    """
    where = uri or key
    if "\x00" in key:
        raise InvalidUriError(f"{where!r} contains a NUL byte.", uri=uri)
    if ".." in key.split("/"):
        raise InvalidUriError(f"{where!r} contains a '..' path segment.", uri=uri)
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        raise InvalidUriError(f"{where!r} is longer than {_MAX_KEY_BYTES} bytes.", uri=uri)
    return key
