"""bench/submit_scale.py's indexed listing: the S3 stand-in must list exactly what moto lists,
page by page, or the bench would time a submit of the wrong objects. Against the moto server
the integration tests use (in this process, so its backend can be indexed as the bench does)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import submit_scale
finally:
    sys.path.remove(str(ROOT / "bench"))


@pytest.fixture
def filled(s3_client: Any) -> Iterator[tuple[Any, Any, str, str]]:
    """Two fresh buckets with the same keys on the moto server; the backend unindexed after."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    buckets = [f"test-{uuid.uuid4().hex[:20]}" for _ in range(2)]
    for bucket in buckets:
        s3_client.create_bucket(Bucket=bucket)
        # Keys before, inside and after the prefix, and a "folder" inside it.
        for key in ["a/1", "cat", "catalogue/x/y.jpg", "catalogue0", "d/2"] + [
            f"catalogue/{i:05d}.jpg" for i in range(2345)
        ]:
            backend.put_object(bucket, key, b"x")
    try:
        yield s3_client, backend, buckets[0], buckets[1]
    finally:
        vars(backend).pop("list_objects_v2", None)  # the session's server lists as moto again


def _pages(client: Any, bucket: str, **kwargs: Any) -> list[list[str]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs)
    return [
        [o["Key"] for o in page.get("Contents", [])]
        + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        for page in pages
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"Prefix": "catalogue/"},
        {"Prefix": "catalogue"},
        {"Prefix": "catalogue/", "PaginationConfig": {"PageSize": 700}},
        {"Prefix": "catalogue/", "StartAfter": "catalogue/01000.jpg"},
        {},
        {"Prefix": "catalogue/", "Delimiter": "/"},
        {"Prefix": "nothing/"},
    ],
)
def test_the_indexed_listing_gives_the_pages_moto_gives(
    filled: tuple[Any, Any, str, str], kwargs: dict[str, Any]
) -> None:
    client, backend, bench, other = filled
    before = _pages(client, bench, **kwargs)
    submit_scale.index_listing(backend, bench)
    assert "list_objects_v2" in vars(backend)  # the instance answers now, not the class
    assert _pages(client, bench, **kwargs) == before
    assert _pages(client, other, **kwargs) == before  # other buckets: moto's own listing
