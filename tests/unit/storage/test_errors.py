"""Error codes are a contract (stored on items, shown to users); translation of botocore
errors is checked with real botocore objects: a client with a Stubber, no network."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.stub import Stubber

from storage import (
    AccessDeniedError,
    InvalidUriError,
    ObjectNotFoundError,
    S3Store,
    StorageError,
    TransientStorageError,
)
from storage.s3 import _translate

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def test_codes() -> None:
    assert StorageError.code == "storage_error"
    assert ObjectNotFoundError.code == "input_not_found"
    assert AccessDeniedError.code == "input_access_denied"
    assert TransientStorageError.code == "storage_unavailable"
    assert InvalidUriError.code == "invalid_uri"
    for cls in (ObjectNotFoundError, AccessDeniedError, TransientStorageError, InvalidUriError):
        assert issubclass(cls, StorageError)


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Client, Stubber]]:
    import boto3.session

    session = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )
    client = session.client("s3")
    with Stubber(client) as stubber:
        yield client, stubber


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, TransientStorageError),
        ("RequestTimeout", 400, TransientStorageError),
        ("ServiceUnavailable", 503, TransientStorageError),
        ("NoSuchKey", 404, ObjectNotFoundError),
        ("NoSuchBucket", 404, ObjectNotFoundError),
        ("AccessDenied", 403, AccessDeniedError),
        ("InvalidObjectState", 403, AccessDeniedError),
        ("SomethingNew", 400, StorageError),
    ],
)
def test_client_errors_translated(
    stubbed: tuple[S3Client, Stubber], code: str, status: int, expected: type[StorageError]
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code=code, http_status_code=status)
    with pytest.raises(expected) as info:
        S3Store(client, "bucket").read_bytes("k.jpg")
    assert type(info.value) is expected
    assert info.value.uri == "s3://bucket/k.jpg"
    assert isinstance(info.value.__cause__, ClientError)


def test_head_404_means_missing(stubbed: tuple[S3Client, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("head_object", service_error_code="404", http_status_code=404)
    assert not S3Store(client, "bucket").exists("k")


def test_head_403_is_not_missing(stubbed: tuple[S3Client, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("head_object", service_error_code="403", http_status_code=403)
    with pytest.raises(AccessDeniedError):
        S3Store(client, "bucket").exists("k")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (EndpointConnectionError(endpoint_url="http://nowhere"), TransientStorageError),
        (ReadTimeoutError(endpoint_url="http://nowhere"), TransientStorageError),
        (ParamValidationError(report="Invalid bucket name"), InvalidUriError),
        (NoCredentialsError(), StorageError),
    ],
)
def test_botocore_errors_translated(exc: Exception, expected: type[StorageError]) -> None:
    err = _translate(exc, "s3://bucket/k")
    assert type(err) is expected
    assert "s3://bucket/k" in str(err)


def test_import_is_cheap() -> None:
    # The CLI imports storage on every start; boto3 must only load when a client is built.
    code = "import sys, storage; sys.exit(int('boto3' in sys.modules or 'botocore' in sys.modules))"
    repo_root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=False)
    assert result.returncode == 0
