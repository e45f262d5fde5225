"""Submit in two streaming passes (check, then write in chunks, one transaction): the rows, the
doorbells and the idempotency fingerprint are those of the one-list path, whatever the
chunking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher
from jobs.errors import RequestError
from jobs.kinds.registry import get_kind
from jobs.lifecycle import claim_next
from jobs.submit import job as submit_module
from jobs.submit import rows as submit_rows
from jobs.submit.fingerprint import describe_inputs, fingerprint_of, fingerprint_streamed
from jobs.submit.input_store import store_inputs
from jobs.submit.job import add_job, submit_job, with_input_error, write_job
from jobs.submit.request import SubmitRequest, build_job
from jobs.submit.rows import prepare_rows, stamp_queued
from jobs.submit.sources import InputSpec, expand_sources, iter_sources
from storage import Blobs, LocalStore
from tests.helpers import image_bytes

_COLUMNS = (
    "seq",
    "custom_id",
    "source",
    "input_uri",
    "input_sha256",
    "prompt",
    "request",
    "status",
    "attempts",
    "dispatched_at",
    "lease_token",
    "transient_failures",
    "error_code",
    "error_message",
    "finished_at IS NULL",
)


def _request(sources: list[str], kind: str = "caption", **kw: Any) -> SubmitRequest:
    return SubmitRequest.of(kind, sources, "m", max_new_tokens=4, batch_size=3, **kw)


def _specs(folder: Path) -> list[InputSpec]:
    local = folder / "a.png"
    local.write_bytes(image_bytes((8, 8), 1))
    return [
        InputSpec(source=str(local), local_path=local, size=local.stat().st_size, version="1"),
        InputSpec(source="s3://b/k.jpg", uri="s3://b/k.jpg", size=3, version="e", prompt="Hi?"),
        InputSpec(
            source="s3://b/l.jpg", uri="s3://b/l.jpg", size=3, custom_id="x", where="m, line 3"
        ),
        InputSpec(
            source="https://x/y.png",
            uri="https://x/y.png",
            input_error=("input_scheme_not_allowed", "never fetched"),
        ),
    ]


def _rows(session_factory: SessionFactory, job_id: str) -> list[tuple[Any, ...]]:
    # Raw SQL, so a JSON null and an SQL NULL are told apart.
    columns = ", ".join(_COLUMNS) + ", request IS NULL"
    with session_factory() as session:
        return [
            tuple(row)
            for row in session.execute(
                text(f"SELECT {columns} FROM items WHERE job_id = :job ORDER BY seq"),
                {"job": job_id},
            )
        ]


def test_write_job_inserts_the_rows_add_job_does(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    specs = _specs(tmp_path)
    request = _request(["unused"])
    kind = get_kind(request.kind)
    stamp = utcnow()
    asks = [
        with_input_error(
            kind.item_ask(request.params, s.prompt, s.extra, where=s.source, max_prompt_chars=4000),
            s,
        )
        for s in specs
    ]
    job, items = build_job(request, specs, store_inputs(specs, blobs), asks, fingerprint="f")
    with session_factory.begin() as session:
        add_job(session, job, items, dispatched_at=stamp)
    written, _ = build_job(request, [], [], fingerprint="f")
    rows = prepare_rows(written.id, request, iter(specs), blobs, max_prompt_chars=4000)
    queued = stamp_queued(rows, stamp)
    with session_factory.begin() as session:
        write_job(session, written, rows)
    assert _rows(session_factory, written.id) == _rows(session_factory, job.id)
    assert queued == [row["id"] for row in rows[:3]]  # the refused input has no message
    with session_factory() as session:
        stored = session.scalars(
            select(Item.id).where(Item.job_id == written.id).order_by(Item.seq)
        ).all()
        assert list(stored) == [row["id"] for row in rows]
        new, old = session.get(Job, written.id), session.get(Job, job.id)
        assert new is not None and old is not None
        assert (new.kind, new.status, new.prompt, new.params, new.model) == (
            old.kind,
            old.status,
            old.prompt,
            old.params,
            old.model,
        )


def _manifest(folder: Path, count: int, *, bad_line: int | None = None) -> Path:
    lines = []
    for i in range(count):
        (folder / f"{i:03d}.png").write_bytes(image_bytes((8, 8), i))
        entry: dict[str, Any] = {"input": f"{i:03d}.png", "id": f"id-{i}", "prompt": f"P{i}?"}
        if i + 1 == bad_line:
            entry["prompt"] = 5
        lines.append(json.dumps(entry))
        if i % 4 == 0:
            lines.append("")  # blank lines are skipped, and counted
    manifest = folder / "m.jsonl"
    manifest.write_text("\r\n".join(lines) + "\r\n")
    return manifest


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit_rows, "_CHUNK", 2)
    monkeypatch.setattr(submit_rows, "_ROWS_PER_INSERT", 3)
    monkeypatch.setattr(submit_module, "_KEPT_BYTES", 1)  # the inputs are expanded again


@pytest.mark.usefixtures("small_chunks")
def test_a_manifest_streams_in_chunks_in_order(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, 11)
    sent: list[tuple[str, list[str]]] = []
    result = submit_job(
        _request([str(manifest)]),
        session_factory=session_factory,
        blobs=blobs,
        publisher=CallbackPublisher(lambda job, ids: sent.append((job, ids))),
        max_prompt_chars=4000,
    )
    assert result.item_count == 11 and result.dispatched
    with session_factory() as session:
        items = session.scalars(
            select(Item).where(Item.job_id == result.job_id).order_by(Item.seq)
        ).all()
    assert [i.seq for i in items] == list(range(11))
    assert [i.custom_id for i in items] == [f"id-{i}" for i in range(11)]
    assert [i.prompt for i in items] == [f"P{i}?" for i in range(11)]
    assert all(i.input_sha256 and i.dispatched_at is not None for i in items)
    # A doorbell per batch of batch_size, after the commit, naming the job and no item...
    assert sent == [(result.job_id, [])] * 4
    # ...and the claims they make take batches of batch_size, in order, every item once.
    claimed = []
    while batch := claim_next(session_factory, worker="w", lease_seconds=60):
        claimed.append([c.id for c in batch])
    assert [len(ids) for ids in claimed] == [3, 3, 3, 2]
    assert [i for ids in claimed for i in ids] == [i.id for i in items]


@pytest.mark.usefixtures("small_chunks")
def test_a_bad_line_late_in_a_manifest_writes_nothing(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, 9, bad_line=8)
    with pytest.raises(RequestError) as refused:
        submit_job(
            _request([str(manifest)]),
            session_factory=session_factory,
            blobs=blobs,
            publisher=CallbackPublisher(lambda _j, _i: None),
            max_prompt_chars=4000,
        )
    # Line 8 is the 10th line of the file: blank lines after items 0 and 4 count.
    assert refused.value.code == "manifest_invalid" and "line 10" in refused.value.message
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Item)) == 0
    assert isinstance(blobs.store, LocalStore)
    assert [p for p in blobs.store.root.rglob("*") if p.is_file()] == []


@pytest.mark.usefixtures("small_chunks")
def test_an_idempotency_key_finds_a_streamed_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, 7)

    def submit(**kw: Any) -> Any:
        return submit_job(
            _request([str(manifest)], idempotency_key="k", **kw),
            session_factory=session_factory,
            blobs=blobs,
            publisher=CallbackPublisher(lambda _j, _i: None),
            max_prompt_chars=4000,
        )

    first = submit()
    again = submit()
    assert again.existing and again.job_id == first.job_id and again.item_count == 7
    with pytest.raises(RequestError) as conflict:
        submit(name="other")
    assert conflict.value.code == "idempotency_conflict"


@pytest.mark.parametrize("key", [None, "k"])
def test_the_streamed_fingerprint_is_the_one_list_fingerprint(
    blobs: Blobs, tmp_path: Path, key: str | None
) -> None:
    import tempfile

    manifest = _manifest(tmp_path, 5)
    request = _request([str(manifest)], idempotency_key=key, metadata={"team": "a"})
    specs = expand_sources(request.sources, blobs=blobs)
    described = describe_inputs(specs, hashed=key is not None)
    with tempfile.TemporaryFile() as f:
        f.write(", ".join(json.dumps(d, sort_keys=True) for d in described).encode())
        f.seek(0)
        assert fingerprint_streamed(request, f) == fingerprint_of(request, specs)
    checked = submit_module._check_inputs(request, iter(specs), 4000)
    assert checked.fingerprint == fingerprint_of(request, specs)


def test_iter_sources_refuses_duplicates_and_nothing_once_exhausted(
    blobs: Blobs, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes((8, 8), 1))
    manifest = tmp_path / "d.jsonl"
    manifest.write_text(
        json.dumps({"input": "a.png", "id": "x"}) + "\n" + json.dumps({"input": "a.png", "id": "x"})
    )
    found = iter_sources([str(manifest)], blobs=blobs)
    assert len([next(found), next(found)]) == 2  # both yielded before the refusal
    with pytest.raises(RequestError) as duplicate:
        next(found)
    assert duplicate.value.code == "duplicate_id" and "line 2" in duplicate.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RequestError) as nothing:
        list(iter_sources([str(empty)], blobs=blobs))
    assert nothing.value.code == "no_inputs"


def test_a_manifest_that_is_not_utf8_is_refused(blobs: Blobs, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes((8, 8), 1))
    manifest = tmp_path / "bad.jsonl"
    manifest.write_bytes(b'{"input": "a.png"}\n{"input": "\xff.png"}\n')
    with pytest.raises(RequestError) as refused:
        expand_sources([str(manifest)], blobs=blobs)
    assert refused.value.code == "manifest_invalid" and "UTF-8" in refused.value.message
