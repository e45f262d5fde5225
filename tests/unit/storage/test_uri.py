from __future__ import annotations

import pytest

from storage import InvalidUriError, is_s3_uri, parse_s3_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/key.jpg", ("bucket", "key.jpg")),
        ("s3://bucket/a/b/c.png", ("bucket", "a/b/c.png")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/prefix/", ("bucket", "prefix/")),
        ("S3://my.bucket-1/k", ("my.bucket-1", "k")),
        ("s3://bucket/with space/é.jpg", ("bucket", "with space/é.jpg")),
        ("s3://bucket/a..b/c", ("bucket", "a..b/c")),  # ".." inside a name is fine
    ],
)
def test_parse_s3_uri_accepts(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "s3:///key",  # empty bucket
        "s3://",
        "s3://b/key",  # bucket too short
        "s3://bucket/../etc/passwd",
        "s3://bucket/a/../../b",
        "s3://bucket/a/..",
        "s3://bucket/a\x00b",
        "s3://bu\x00cket/a",
        "s3://bad?bucket/a",
        "s3://-bucket/a",
        "https://bucket/a",
        "bucket/a",
        "s3://bucket/" + "k" * 1025,
    ],
)
def test_parse_s3_uri_rejects(uri: str) -> None:
    with pytest.raises(InvalidUriError) as info:
        parse_s3_uri(uri)
    assert info.value.code == "invalid_uri"
    assert str(info.value)  # a human message


def test_is_s3_uri() -> None:
    assert is_s3_uri("s3://bucket/key")
    assert is_s3_uri("S3://bucket")
    assert not is_s3_uri("file:///tmp/x")
    assert not is_s3_uri("/tmp/s3://x")
    assert not is_s3_uri("")
