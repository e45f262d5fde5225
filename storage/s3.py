"""S3 (and S3-compatible) blob store over a shared boto3 client.

boto3/botocore are imported lazily: importing ``storage`` must stay cheap because the CLI
imports it on every start, and boto3 alone costs ~0.3 s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from storage.base import BlobStore, ObjectInfo
from storage.errors import (
    AccessDeniedError,
    InvalidUriError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from storage.limits import check_size, read_limited
from storage.uri import parse_s3_uri, validate_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_PART_BYTES = 8 * 1024 * 1024
# The most keys one DeleteObjects request may name.
_DELETE_BATCH = 1000
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled"})
# What is still failing after boto3's standard retry mode gave up: worth retrying later.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "503",
        "500",
        "502",
        "504",
    }
)


def build_s3_client() -> S3Client:
    """Build the one S3 client a process shares.

    Endpoint, region and credentials come only from boto3's own chain (AWS_ENDPOINT_URL_S3,
    AWS_ACCESS_KEY_ID, profiles…), never from variables of ours.
    """
    import boto3.session
    import botocore.session
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
    )
    core = botocore.session.get_session()
    # Timestamps (a listing's LastModified) stay the strings S3 sent: nothing here reads them,
    # and parsing them into datetimes was most of the client's CPU in a 100k-object listing.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return boto3.session.Session(botocore_session=core).client("s3", config=config)


def _translate(exc: Exception, uri: str) -> StorageError:
    """Map a botocore error onto our error tree (called where botocore errors enter)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ParamValidationError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND_CODES or status == "404":
            return ObjectNotFoundError(f"{uri} does not exist.", uri=uri)
        if code in _DENIED_CODES or status == "403":
            return AccessDeniedError(f"Access to {uri} was denied ({code or status}).", uri=uri)
        if code in _TRANSIENT_CODES or status in _TRANSIENT_CODES:
            return TransientStorageError(
                f"S3 is temporarily unavailable for {uri} ({code or status}).", uri=uri
            )
        return StorageError(f"S3 refused the request for {uri} ({code or status}).", uri=uri)
    # HTTPClientError covers read timeouts and broken response streams; ConnectionError covers
    # EndpointConnectionError and connect timeouts.
    if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
        return TransientStorageError(f"S3 could not be reached for {uri}: {exc}.", uri=uri)
    if isinstance(exc, ParamValidationError):
        return InvalidUriError(f"{uri} is not a valid S3 location: {exc}.", uri=uri)
    return StorageError(f"S3 request for {uri} failed: {exc}.", uri=uri)


@contextmanager
def _translating(uri: str) -> Iterator[None]:
    # Imported here, not at module top: by the time a request runs, botocore is loaded anyway.
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, uri) from exc


class S3Store(BlobStore):
    """Keys live under ``s3://bucket/prefix/``; the client is built once and handed in."""

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> None:
        self._prefix = prefix.strip("/")
        # Validates the bucket name and the prefix in one place.
        parse_s3_uri(f"s3://{bucket}/{self._prefix}")
        self.client = client
        self.bucket = bucket
        # Exposed so tests can force several pages without creating 1,000+ objects.
        self._page_size = page_size

    def _full_key(self, key: str) -> str:
        validate_key(key, uri=key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _object_key(self, key: str) -> str:
        # Reads and writes need an object name, not a prefix.
        if not key or key.endswith("/"):
            raise InvalidUriError(f"{key!r} does not name an object.", uri=key)
        return self._full_key(key)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def write_bytes(self, key: str, data: bytes) -> str:
        full = self._object_key(key)
        uri = f"s3://{self.bucket}/{full}"
        with _translating(uri):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        return uri

    def write_file(self, key: str, fileobj: BinaryIO) -> str:
        """Stores what ``fileobj`` holds from its position on under ``key``: one PUT, or a
        multipart upload over 8 MiB, which S3 shows only once it is complete (one that dies
        half-way leaves parts, never an object: a bucket lifecycle rule aborts them)."""
        from boto3.s3.transfer import TransferConfig

        # Parts of 8 MiB, 4 at a time: what an upload holds in memory is bounded (about 32 MiB)
        # whatever the file's size.
        config = TransferConfig(
            multipart_threshold=_PART_BYTES, multipart_chunksize=_PART_BYTES, max_concurrency=4
        )
        full = self._object_key(key)
        uri = f"s3://{self.bucket}/{full}"
        with _translating(uri):
            self.client.upload_fileobj(fileobj, self.bucket, full, Config=config)
        return uri

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        full = self._object_key(key)
        uri = f"s3://{self.bucket}/{full}"
        with _translating(uri):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                if max_bytes is None:
                    return body.read()
                # The headers are in; the body has not been read yet.
                size = response.get("ContentLength")
                check_size(size, max_bytes, uri)
                return read_limited(body.read, expected=size, max_bytes=max_bytes, uri=uri)
            finally:
                body.close()  # return the connection to the pool even on a short read

    def exists(self, key: str) -> bool:
        full = self._object_key(key)
        uri = f"s3://{self.bucket}/{full}"
        try:
            with _translating(uri):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFoundError:
            return False
        return True

    def delete_many(self, keys: Sequence[str]) -> None:
        full = [self._object_key(key) for key in keys]  # every key checked before any delete
        for start in range(0, len(full), _DELETE_BATCH):
            batch = full[start : start + _DELETE_BATCH]
            uri = f"s3://{self.bucket}/{batch[0]}"
            with _translating(uri):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            # DeleteObjects answers 200 even when some keys failed; each failure is listed.
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                failed = f"s3://{self.bucket}/{first.get('Key', '')}"
                raise StorageError(
                    f"Deleting {failed} failed ({first.get('Code', '?')}), "
                    f"and {len(errors) - 1} other object(s) of the batch.",
                    uri=failed,
                )

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Not a generator itself, so a bad prefix fails at the call, not at first iteration.
        full_prefix = self._full_key(prefix) if prefix else self._list_root()
        return self._iter_objects(full_prefix)

    def _list_root(self) -> str:
        return f"{self._prefix}/" if self._prefix else ""

    def _iter_objects(self, full_prefix: str) -> Iterator[ObjectInfo]:
        # Keys are reported relative to the store prefix, so strip "prefix/".
        strip = len(self._prefix) + 1 if self._prefix else 0
        uri = f"s3://{self.bucket}/{full_prefix}"
        with _translating(uri):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=full_prefix,
                PaginationConfig={"PageSize": self._page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    yield ObjectInfo(
                        uri=f"s3://{self.bucket}/{key}",
                        key=key[strip:],
                        size=int(item.get("Size", 0)),
                        etag=str(item.get("ETag", "")).strip('"'),
                    )
