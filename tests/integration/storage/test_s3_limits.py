"""The input byte limit on S3 (moto server mode): refused from ContentLength before the body is
read, and exact-size objects pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from storage import Blobs, InputTooLargeError, LocalStore, S3Store

if TYPE_CHECKING:
    from pathlib import Path

    from mypy_boto3_s3 import S3Client


def test_object_over_the_limit_is_refused_from_content_length(
    s3_client: S3Client, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.response import StreamingBody

    size = 3 * 2**20
    store = S3Store(s3_client, s3_bucket)
    store.write_bytes("big.bin", b"b" * size)
    reads: list[Any] = []
    real_read = StreamingBody.read

    def counting_read(self: StreamingBody, amt: int | None = None) -> bytes:
        reads.append(amt)
        return real_read(self, amt)

    monkeypatch.setattr(StreamingBody, "read", counting_read)
    with pytest.raises(InputTooLargeError) as info:
        store.read_bytes("big.bin", max_bytes=2**20)
    assert info.value.code == "input_too_large"
    assert f"is {size} bytes" in str(info.value)
    assert info.value.uri == f"s3://{s3_bucket}/big.bin"
    assert reads == []  # judged from the headers: not one byte of the body was read


def test_object_at_the_limit_is_read_whole(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket)
    store.write_bytes("exact.bin", b"e" * 1000)
    store.write_bytes("empty.bin", b"")
    assert store.read_bytes("exact.bin", max_bytes=1000) == b"e" * 1000
    assert store.read_bytes("empty.bin", max_bytes=0) == b""
    with pytest.raises(InputTooLargeError):
        store.read_bytes("exact.bin", max_bytes=999)


def test_blobs_read_uri_limits_foreign_buckets(
    s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    S3Store(s3_client, s3_bucket).write_bytes("catalogue/1.jpg", b"j" * 64)
    blobs = Blobs(LocalStore(tmp_path), s3_client_factory=lambda: s3_client)
    uri = f"s3://{s3_bucket}/catalogue/1.jpg"
    assert blobs.read_uri(uri, max_bytes=64) == b"j" * 64
    with pytest.raises(InputTooLargeError):
        blobs.read_uri(uri, max_bytes=63)
