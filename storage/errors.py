"""The storage error tree.

Every error carries a stable ``code`` (stored on the failed item and shown to users) and a
one-sentence human message (``str(exc)``). Callers decide what to do from the class:
``TransientStorageError`` means retry with backoff; the others fail one item permanently.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage failure; raised as-is for failures we cannot classify."""

    code: str = "storage_error"

    def __init__(self, message: str, *, uri: str = "") -> None:
        super().__init__(message)
        # Kept separately so callers can log the object without parsing the message.
        self.uri = uri


class ObjectNotFoundError(StorageError):
    """The object, its bucket or the local file does not exist."""

    code = "input_not_found"


class AccessDeniedError(StorageError):
    """The store refused access (S3 403 / AccessDenied, local PermissionError)."""

    code = "input_access_denied"


class TransientStorageError(StorageError):
    """Throttling, timeouts or an unreachable endpoint that outlasted boto3's own retries."""

    code = "storage_unavailable"


class InvalidUriError(StorageError):
    """A malformed URI or key: a ``..`` segment, a NUL byte, an empty bucket, a path outside
    the store root."""

    code = "invalid_uri"


class SchemeNotAllowedError(InvalidUriError):
    """A URI whose scheme no store reads (``https://``, ``ftp://``, …): inputs are never fetched
    from the network; only ``s3://`` and our own stored inputs are read."""

    code = "input_scheme_not_allowed"


class InputTooLargeError(StorageError):
    """The object is larger than the reader's byte limit (judged from its stat size or S3
    ``ContentLength`` before reading, and again while streaming); permanent for that input."""

    code = "input_too_large"
