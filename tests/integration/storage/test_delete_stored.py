"""Deleting stored inputs (``Blobs.delete_stored``) on both stores: only what
``put_content_addressed`` stored is ever deleted, and a missing object is not an error."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage import Blobs, InvalidUriError, S3Store, open_blobs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "local":
        return open_blobs(str(tmp_path / "blobs dir"))  # a space: file:// URIs are quoted
    client: S3Client = request.getfixturevalue("s3_client")
    bucket: str = request.getfixturevalue("s3_bucket")
    return Blobs(S3Store(client, bucket, "llava-inputs"), s3_client_factory=lambda: client)


def test_deletes_what_it_stored_and_a_missing_object_is_no_error(blobs: Blobs) -> None:
    kept = blobs.put_content_addressed(b"kept", suffix=".png")
    gone = [blobs.put_content_addressed(f"x{i}".encode(), suffix=".v2 final") for i in range(3)]
    blobs.delete_stored([b.uri for b in gone])
    blobs.delete_stored([gone[0].uri])  # again, as after a crash: already gone
    for blob in gone:
        key = blob.uri.split("/inputs/sha256/", 1)[1]
        assert not blobs.store.exists(f"inputs/sha256/{key}".replace("%20", " "))
    assert blobs.read_uri(kept.uri) == b"kept"


def test_refuses_anything_it_did_not_store_and_deletes_nothing(blobs: Blobs) -> None:
    """Only an input stored by put_content_addressed is deleted: a user's object, another key
    of the store, a path that climbs out, or a key of the wrong shape refuses the whole call."""
    stored = blobs.put_content_addressed(b"stored", suffix=".png")
    other = blobs.store.write_bytes("results/a.json", b"{}")
    area = blobs.store.uri_for("inputs/sha256")
    foreign = [
        other,
        "s3://someone-else/inputs/sha256/ab/" + "ab" * 32,
        f"{area}/../../results/a.json",
        f"{area}/ab/not-a-digest",
        f"{area}/cd/{'ab' * 32}",  # its folder is not its digest's
        f"{area}/ab",
    ]
    for uri in foreign:
        with pytest.raises(InvalidUriError):
            blobs.delete_stored([stored.uri, uri])
    assert blobs.read_uri(stored.uri) == b"stored"
    assert blobs.store.exists("results/a.json")


def test_stored_sha256_names_only_what_it_stored(blobs: Blobs) -> None:
    stored = blobs.put_content_addressed(b"stored", suffix=".png")
    assert blobs.stored_sha256(stored.uri) == stored.sha256
    area = blobs.store.uri_for("inputs/sha256")
    for uri in (
        blobs.store.uri_for("results/a.json"),
        f"{area}/cd/{stored.sha256}.png",
        f"{area}/{stored.sha256[:2]}/{stored.sha256}/x.png",
        "s3://someone-else/inputs/sha256/ab/" + "ab" * 32,
    ):
        assert blobs.stored_sha256(uri) is None


def test_s3_deletes_in_batches_of_at_most_a_thousand(s3_client: S3Client, s3_bucket: str) -> None:
    calls: list[int] = []
    event = "before-parameter-build.s3.DeleteObjects"
    s3_client.meta.events.register(
        event, lambda params, **_: calls.append(len(params["Delete"]["Objects"])), "count"
    )
    try:
        S3Store(s3_client, s3_bucket).delete_many([f"k/{i}" for i in range(2500)])
    finally:  # the client is the session's
        s3_client.meta.events.unregister(event, unique_id="count")
    assert calls == [1000, 1000, 500]
