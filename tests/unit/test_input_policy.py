"""jobs.input_policy and its setting, LLAVA_BATCH_INPUT_PREFIXES: how entries are read, and
what they admit (a prefix names a folder; the deployment's own stored inputs stay readable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.input_policy import ANYTHING, InputPolicy, parse_entries
from jobs.settings import Settings


def test_the_setting_is_a_comma_separated_list_checked_and_normalised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "LLAVA_BATCH_INPUT_PREFIXES", f" s3://bucket/in, s3://other , {tmp_path}/x/.."
    )
    assert Settings.from_env().input_prefixes == ("s3://bucket/in/", "s3://other/", str(tmp_path))
    monkeypatch.setenv("LLAVA_BATCH_INPUT_PREFIXES", "")
    assert Settings.from_env().input_prefixes == ()
    monkeypatch.delenv("LLAVA_BATCH_INPUT_PREFIXES")
    assert Settings.from_env().input_prefixes == ()


@pytest.mark.parametrize(
    "bad", ["relative/folder", "https://bucket/in/", "s3://", "s3://x/in/", "s3://bucket/a/../b"]
)
def test_a_bad_entry_stops_the_settings(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("LLAVA_BATCH_INPUT_PREFIXES", f"s3://bucket/in/,{bad}")
    with pytest.raises(ValidationError, match="input_prefixes"):
        Settings.from_env()


def test_an_s3_entry_admits_its_folder_and_nothing_beside_it() -> None:
    policy = InputPolicy.of(["s3://bucket/in"])
    for allowed in [
        "s3://bucket/in/",
        "s3://bucket/in/a.png",
        "S3://bucket/in/sub/",
        "s3://bucket/in//x",
    ]:
        assert policy.allows_s3(allowed), allowed
    for refused in [
        "s3://bucket/in",
        "s3://bucket/inbox/a.png",
        "s3://bucket/",
        "s3://bucket2/in/",
    ]:
        assert not policy.allows_s3(refused), refused
    assert InputPolicy.of(["s3://bucket"]).allows_s3("s3://bucket/anything.png")
    assert ANYTHING.allows_s3("s3://any/thing") and not ANYTHING.restricted


def test_local_inputs_are_bounded_only_by_listed_folders(tmp_path: Path) -> None:
    s3_only = InputPolicy.of(["s3://bucket/in/"])
    assert s3_only.allows_local(Path("/etc/hosts"))  # read with the submitter's own rights
    folders = InputPolicy.of([str(tmp_path / "in")])
    assert folders.allows_local(tmp_path / "in" / "a.png")
    assert not folders.allows_local(tmp_path / "in" / ".." / "out.png")
    assert not folders.allows_local(tmp_path / "inbox")
    assert not folders.allows_s3("s3://bucket/in/")  # set: S3 needs an entry of its own


def test_workers_read_stored_inputs_and_named_objects_under_the_list() -> None:
    policy = InputPolicy.of(["s3://users/in/"])
    blob = "s3://deploy/store/inputs/sha256/ab/abcd.png"
    assert policy.allows_read("photos/a.png", blob, stored_here=True)  # a submit stored it
    assert not policy.allows_read(blob, blob, stored_here=True)  # a user named it in place
    assert not policy.allows_read("photos/a.png", blob, stored_here=False)
    assert policy.allows_read("s3://users/in/a.png", "s3://users/in/a.png", stored_here=False)
    assert policy.allows_read("a.png", "file:///data/blobs/inputs/x.png", stored_here=False)
    assert ANYTHING.allows_read(blob, blob, stored_here=True)


def test_entries_are_parsed_the_same_from_a_list() -> None:
    assert parse_entries(["s3://bucket/in", "s3://bucket/in/"]) == ("s3://bucket/in/",) * 2
    assert parse_entries(None) == ()


def test_the_store_knows_what_a_submit_stored_in_it(tmp_path: Path) -> None:
    from storage import open_blobs

    blobs = open_blobs(str(tmp_path / "store"))
    stored = blobs.put_content_addressed(b"bytes", suffix=".png")
    assert blobs.holds(stored.uri)
    assert not blobs.holds((tmp_path / "store" / "other.png").as_uri())
    assert not blobs.holds("s3://bucket/inputs/sha256/ab/abcd.png")
