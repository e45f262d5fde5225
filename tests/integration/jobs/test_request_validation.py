"""Validation at the door: a request that cannot be honoured is refused at submit with a stable
code and one sentence, and nothing is written: no job or item rows, no stored blobs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory
from jobs.dispatch import CallbackPublisher
from jobs.errors import JobNotFoundError, RequestError
from jobs.queries import find_job
from jobs.submit.input_store import store_inputs
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.submit.sources import InputSpec
from storage import Blobs, LocalStore
from tests.helpers import image_bytes, write_images


def _request(sources: list[str], **kw: Any) -> SubmitRequest:
    fields: dict[str, Any] = dict(
        kind="caption", sources=sources, model="m", max_new_tokens=4, batch_size=4
    )
    fields.update(kw)
    return SubmitRequest.of(**fields)


def _submit(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> SubmitResult:
    return submit_job(
        request,
        session_factory=sf,
        blobs=blobs,
        publisher=CallbackPublisher(lambda _j, _i: None),
        max_prompt_chars=4000,
    )


def _stored_files(blobs: Blobs) -> list[Path]:
    assert isinstance(blobs.store, LocalStore)
    return [p for p in blobs.store.root.rglob("*") if p.is_file()]


def _refused(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> RequestError:
    with pytest.raises(RequestError) as refused:
        _submit(sf, blobs, request)
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Item)) == 0
    assert _stored_files(blobs) == []
    assert refused.value.message and "\n" not in refused.value.message
    return refused.value


def _manifest(path: Path, *entries: dict[str, Any] | str) -> Path:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / "ok.png").write_bytes(image_bytes((10, 10), 1))
    return catalogue


def test_a_manifest_that_includes_itself_is_refused(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    direct = _manifest(folder / "self.jsonl", {"input": "ok.png"}, {"input": "./self.jsonl"})
    error = _refused(session_factory, blobs, _request([str(direct)]))
    assert error.code == "manifest_invalid" and "line 2" in error.message
    _manifest(folder / "a.jsonl", {"input": "ok.png"}, {"input": "b.jsonl"})
    _manifest(folder / "b.jsonl", {"input": str(folder / "a.jsonl")})
    error = _refused(session_factory, blobs, _request([str(folder / "a.jsonl")]))
    assert error.code == "manifest_invalid" and "a.jsonl" in error.message


def test_a_file_name_that_is_not_utf8_is_refused_before_anything_is_stored(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
        f.write(image_bytes((10, 10), 2))
    error = _refused(session_factory, blobs, _request([str(folder)]))
    assert error.code == "invalid_source" and "caf\\xe9.png" in error.message
    error.message.encode("utf-8")  # printable as it is
    manifest = _manifest(folder.parent / "m.jsonl", '{"input": "catalogue/\\ud800.png"}')
    assert _refused(session_factory, blobs, _request([str(manifest)])).code == "invalid_source"


def test_ids_names_and_keys_are_limited_in_the_request_not_by_the_database(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    long_id = _manifest(folder / "m.jsonl", {"input": "ok.png", "id": "x" * 501})
    assert _refused(session_factory, blobs, _request([str(long_id)])).code == "invalid_custom_id"
    long_name = _request([str(folder)], name="n" * 201)
    assert _refused(session_factory, blobs, long_name).code == "invalid_name"
    long_key = _request([str(folder)], idempotency_key="k" * 201)
    assert _refused(session_factory, blobs, long_key).code == "invalid_idempotency_key"
    for bad in ({"name": "a\ud800"}, {"name": "a\x00b"}, {"idempotency_key": "\udcff"}):
        error = _refused(session_factory, blobs, _request([str(folder)], **bad))
        assert error.code in ("invalid_name", "invalid_idempotency_key"), bad
    surrogate_id = _manifest(folder / "m.jsonl", '{"input": "ok.png", "id": "\\ud800"}')
    assert (
        _refused(session_factory, blobs, _request([str(surrogate_id)])).code == "invalid_custom_id"
    )
    # At the limits, both databases store them.
    _manifest(folder / "m.jsonl", {"input": "ok.png", "id": "x" * 500})
    at_limit = _request([str(folder / "m.jsonl")], name="n" * 200, idempotency_key="k" * 200)
    assert _submit(session_factory, blobs, at_limit).item_count == 1


def test_a_prompt_with_a_lone_surrogate_is_refused(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    request = _request([str(folder)], prompt="Describe \ud800 this.")
    assert _refused(session_factory, blobs, request).code == "invalid_prompt"
    manifest = _manifest(folder / "m.jsonl", '{"input": "ok.png", "prompt": "Say \\udcff."}')
    assert _refused(session_factory, blobs, _request([str(manifest)])).code == "invalid_prompt"


def test_per_job_options_are_capped_like_the_settings(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    for bad in (
        {"batch_size": 100_000},
        {"batch_size": 0},
        {"max_new_tokens": 100_000_000},
        {"max_new_tokens": 0},
    ):
        error = _refused(session_factory, blobs, _request([str(folder)], **bad))
        assert error.code == "invalid_option", bad
    at_limit = _request([str(folder)], batch_size=1024, max_new_tokens=8192)
    assert _submit(session_factory, blobs, at_limit).item_count == 1


def test_manifest_entries_must_stay_inside_the_manifests_folder(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, folder: Path
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes((10, 10), 3))
    (folder / "link.png").symlink_to(outside)
    for entry in (str(outside), "../outside.png", "link.png", "/etc/passwd", "/"):
        manifest = _manifest(folder / "m.jsonl", {"input": "ok.png"}, {"input": entry})
        error = _refused(session_factory, blobs, _request([str(manifest)]))
        assert error.code == "manifest_escape" and "line 2" in error.message, entry
    for entry in ("", "   "):
        manifest = _manifest(folder / "m.jsonl", {"input": "ok.png"}, {"input": entry})
        error = _refused(session_factory, blobs, _request([str(manifest)]))
        assert error.code == "manifest_invalid" and "line 2" in error.message, entry
    (folder / "link.png").unlink()
    sub = folder / "sub"
    write_images(sub, 2)
    inside = _manifest(
        folder / "m.jsonl",
        {"input": "ok.png"},
        {"input": "sub"},
        {"input": str(sub / "img000.png"), "id": "absolute, inside"},
    )
    assert _submit(session_factory, blobs, _request([str(inside)])).item_count == 4


def test_job_id_prefixes_match_literally(
    session_factory: SessionFactory, blobs: Blobs, folder: Path
) -> None:
    job_id = _submit(session_factory, blobs, _request([str(folder)])).job_id
    with session_factory() as session:
        for ref in ("%%%%", "____", job_id[:4] + "%", "_" + job_id[1:6], job_id[:5] + "_"):
            with pytest.raises(JobNotFoundError):
                find_job(session, ref)
        assert find_job(session, job_id[:6]).id == job_id


def test_the_idempotency_key_follows_the_files_not_the_typed_path(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    write_images(here / "photos", 2)
    write_images(there / "photos", 3, prefix="other")
    monkeypatch.chdir(here)
    first = _submit(session_factory, blobs, _request(["photos"], idempotency_key="k"))
    same_files = _request([str(here / "photos")], idempotency_key="k")
    again = _submit(session_factory, blobs, same_files)
    assert again.existing and again.job_id == first.job_id
    write_images(here / "photos", 2)  # written again with the same bytes: the same request
    rewritten = _submit(session_factory, blobs, _request(["photos"], idempotency_key="k"))
    assert rewritten.existing and rewritten.job_id == first.job_id

    monkeypatch.chdir(there)  # the same words, other files: not the same request
    with pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, _request(["photos"], idempotency_key="k"))
    assert refused.value.code == "idempotency_conflict"

    monkeypatch.chdir(here)  # the same folder, but a file in it was replaced
    (here / "photos" / "img000.png").write_bytes(image_bytes((90, 90), 9))
    with pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, _request(["photos"], idempotency_key="k"))
    assert refused.value.code == "idempotency_conflict"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_file_that_grew_after_its_size_was_checked_is_not_read_whole(
    blobs: Blobs, tmp_path: Path
) -> None:
    path = tmp_path / "growing.png"
    path.write_bytes(b"x" * 1000)
    checked_at = InputSpec(source=str(path), local_path=path, size=10)
    with pytest.raises(RequestError) as refused:
        store_inputs([checked_at], blobs)
    assert refused.value.code == "source_changed"
    assert _stored_files(blobs) == []
