"""S3Store and Blobs against a real HTTP S3 endpoint (moto server mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage import (
    AccessDeniedError,
    Blobs,
    InvalidUriError,
    ObjectNotFoundError,
    S3Store,
    build_s3_client,
    open_blobs,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _count_calls(client: S3Client, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` request the client sends."""
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    client.meta.events.register(f"before-parameter-build.s3.{operation}", record)
    return calls


def test_roundtrip_under_prefix(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket, "/inputs/run-1/")
    uri = store.write_bytes("img/a.jpg", b"jpeg bytes")
    assert uri == f"s3://{s3_bucket}/inputs/run-1/img/a.jpg"
    assert store.uri_for("img/a.jpg") == uri
    assert store.read_bytes("img/a.jpg") == b"jpeg bytes"
    assert store.exists("img/a.jpg")
    assert not store.exists("img/b.jpg")
    raw = s3_client.get_object(Bucket=s3_bucket, Key="inputs/run-1/img/a.jpg")
    assert raw["Body"].read() == b"jpeg bytes"


def test_zero_byte_object(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket)
    store.write_bytes("empty.bin", b"")
    assert store.read_bytes("empty.bin") == b""
    [info] = store.list_objects()
    assert info.size == 0


def test_not_found(s3_client: S3Client, s3_bucket: str) -> None:
    with pytest.raises(ObjectNotFoundError) as info:
        S3Store(s3_client, s3_bucket).read_bytes("missing.jpg")
    assert info.value.code == "input_not_found"
    assert info.value.uri == f"s3://{s3_bucket}/missing.jpg"
    with pytest.raises(ObjectNotFoundError):
        S3Store(s3_client, "no-such-bucket-here").read_bytes("x.jpg")


def test_access_denied_by_bucket_policy(s3_client: S3Client, s3_bucket: str) -> None:
    # moto's server enforces an explicit Deny in a bucket policy, so this is a real HTTP 403.
    S3Store(s3_client, s3_bucket).write_bytes("private.jpg", b"x")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{s3_bucket}/*",
            }
        ],
    }
    s3_client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(policy))
    blobs = Blobs(S3Store(s3_client, "our-store-bucket"), s3_client_factory=lambda: s3_client)
    with pytest.raises(AccessDeniedError) as info:
        blobs.read_uri(f"s3://{s3_bucket}/private.jpg")
    assert info.value.code == "input_access_denied"


def test_list_paginates_past_1000(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket, "many")
    keys = [f"obj-{i:05d}" for i in range(1001)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: store.write_bytes(k, k.encode()), keys))
    calls = _count_calls(s3_client, "ListObjectsV2")
    try:
        listed = list(store.list_objects())
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2")
    assert [o.key for o in listed] == keys
    assert len(calls) == 2  # S3's 1,000-key page limit forces a second request
    assert all(o.size == 9 and o.etag and '"' not in o.etag for o in listed)


def test_list_small_pages_is_lazy(s3_bucket: str, moto_server: str) -> None:
    client = build_s3_client()  # a private client: the event hook must not leak
    store = S3Store(client, s3_bucket, page_size=2)
    for name in ("a/1", "a/2", "a/3", "a/4", "a/5", "b/6"):
        store.write_bytes(name, b"x")
    calls = _count_calls(client, "ListObjectsV2")
    objects = store.list_objects("a/")
    assert calls == []  # nothing is requested until iteration
    first = next(objects)
    assert first.key == "a/1"
    assert first.uri == f"s3://{s3_bucket}/a/1"
    assert len(calls) == 1
    assert [o.key for o in objects] == ["a/2", "a/3", "a/4", "a/5"]
    assert len(calls) == 3


def test_put_content_addressed_writes_once(s3_bucket: str, moto_server: str) -> None:
    client = build_s3_client()
    puts = _count_calls(client, "PutObject")
    blobs = Blobs(S3Store(client, s3_bucket, "store"), s3_client_factory=lambda: client)
    first = blobs.put_content_addressed(b"same image", suffix=".png")
    key = first.uri.removeprefix(f"s3://{s3_bucket}/")
    modified = client.head_object(Bucket=s3_bucket, Key=key)["LastModified"]
    time.sleep(1.1)  # LastModified has one-second resolution
    second = blobs.put_content_addressed(b"same image", suffix=".png")
    assert second == first
    assert key.startswith(f"store/inputs/sha256/{first.sha256[:2]}/{first.sha256}")
    assert len(puts) == 1
    assert client.head_object(Bucket=s3_bucket, Key=key)["LastModified"] == modified
    assert blobs.read_uri(first.uri) == b"same image"


def test_blobs_reads_and_lists_foreign_bucket(
    s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    catalogue = S3Store(s3_client, s3_bucket)
    for key in ("cat/1.jpg", "cat/2.jpg", "dog/3.jpg"):
        catalogue.write_bytes(key, key.encode())
    built: list[S3Client] = []

    def factory() -> S3Client:
        built.append(s3_client)
        return s3_client

    (tmp_path / "store").mkdir()
    blobs = Blobs(S3Store(s3_client, "unused-bucket"), s3_client_factory=factory)
    assert built == []  # built lazily
    assert blobs.read_uri(f"s3://{s3_bucket}/cat/1.jpg") == b"cat/1.jpg"
    listed = list(blobs.list_uri(f"s3://{s3_bucket}/cat/"))
    assert [(o.key, o.uri) for o in listed] == [
        ("cat/1.jpg", f"s3://{s3_bucket}/cat/1.jpg"),
        ("cat/2.jpg", f"s3://{s3_bucket}/cat/2.jpg"),
    ]
    assert len(built) == 1  # and reused


@pytest.mark.parametrize(
    "uri", ["s3://{b}/../x.jpg", "s3://{b}/a/\x00.jpg", "s3:///x.jpg", "s3://{b}/dir/"]
)
def test_invalid_uris_refused(s3_client: S3Client, s3_bucket: str, uri: str) -> None:
    blobs = Blobs(S3Store(s3_client, s3_bucket), s3_client_factory=lambda: s3_client)
    with pytest.raises(InvalidUriError) as info:
        blobs.read_uri(uri.format(b=s3_bucket))
    assert info.value.code == "invalid_uri"


def test_open_blobs_uses_boto3_environment(s3_bucket: str, moto_server: str) -> None:
    assert os.environ["AWS_ENDPOINT_URL_S3"] == moto_server
    blobs = open_blobs(f"s3://{s3_bucket}/prefix")
    stored = blobs.put_content_addressed(b"abc")
    assert blobs.read_uri(stored.uri) == b"abc"


def test_subprocess_inherits_endpoint(s3_client: S3Client, s3_bucket: str) -> None:
    # Real Celery workers are subprocesses: they must reach the same S3 from the environment.
    S3Store(s3_client, s3_bucket).write_bytes("k", b"from parent")
    code = (
        "import sys, storage; "
        f"sys.stdout.write(storage.open_blobs('s3://{s3_bucket}').read_uri('s3://{s3_bucket}/k')"
        ".decode())"
    )
    repo_root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True
    )
    assert result.stdout == "from parent"


def test_listings_leave_timestamps_unparsed(s3_client: S3Client, s3_bucket: str) -> None:
    """Nothing reads an object's LastModified, and parsing it was about half of the client's CPU
    in a 100k-object listing: our client keeps it as the string S3 sent."""
    s3_client.put_object(Bucket=s3_bucket, Key="t/a.jpg", Body=b"x")
    (listed,) = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="t/")["Contents"]
    assert isinstance(listed["LastModified"], str) and listed["LastModified"].startswith("20")
    assert [o.key for o in S3Store(s3_client, s3_bucket).list_objects("t/")] == ["t/a.jpg"]
