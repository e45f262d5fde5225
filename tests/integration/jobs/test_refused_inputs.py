"""A bad input fails only its own item, also at submit (docs/design.md#I6), on SQLite and
PostgreSQL: a listed input that is empty or over LLAVA_BATCH_MAX_INPUT_BYTES (a file in a
folder, an object under a prefix, a manifest's entry) becomes an item written ``failed`` with
``empty_input`` / ``input_too_large``, never read or stored, and the rest of the job runs and
finishes. A request-level problem still refuses the whole submit, writing nothing.

Each test names the invariant of docs/design.md it checks (invariant I6 is docs/design.md#I6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory
from jobs.errors import RequestError
from jobs.hooks import pause_at
from jobs.lifecycle import requeue_failed
from jobs.states import ItemStatus, JobStatus
from jobs.submit import rows as submit_rows
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from model.fake import FakeEngine
from storage import Blobs, LocalStore
from tests.helpers import ListPublisher, image_bytes, make_resources, queued_ids, write_images
from workers.pipeline import process_batch


def _submit(
    sf: SessionFactory,
    blobs: Blobs,
    sources: list[str],
    publisher: ListPublisher | None = None,
    **kw: Any,
) -> SubmitResult:
    request = SubmitRequest.of("caption", sources, "m", max_new_tokens=4, batch_size=2, **kw)
    return submit_job(
        request,
        session_factory=sf,
        blobs=blobs,
        publisher=publisher or ListPublisher(),
        max_prompt_chars=1000,
    )


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _job(sf: SessionFactory, job_id: str) -> Job:
    with sf() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def _stored(blobs: Blobs) -> int:
    assert isinstance(blobs.store, LocalStore)
    return sum(1 for p in blobs.store.root.rglob("*") if p.is_file())


def _folder(tmp_path: Path) -> tuple[Path, int]:
    """Three images, an empty file and one image over the limit returned (the largest of the
    others' sizes): sorted, the refused ones are seq 0 (big) and 4 (zero)."""
    folder = tmp_path / "photos"
    write_images(folder, 3)
    limit = max(p.stat().st_size for p in folder.iterdir())
    (folder / "big.png").write_bytes(image_bytes((200, 200), seed=99) + b"\0" * limit)
    (folder / "zero.png").write_bytes(b"")
    return folder, limit


def test_an_empty_and_an_oversized_file_fail_alone_and_the_rest_runs(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I6 (and I5: every accepted item ends terminal): one zero-byte file and one over
    the byte limit among good ones do not refuse the folder. Their items are written failed
    with their codes and one sentence, nothing of them is read or stored or rung for (no
    doorbell claims them), workers answering the doorbells run the rest, and the job
    completes. The same key returns the same job."""
    folder, limit = _folder(tmp_path)
    bell = ListPublisher()
    result = _submit(
        session_factory, blobs, [str(folder)], bell, max_input_bytes=limit, idempotency_key="k"
    )
    assert (result.item_count, result.failed, result.dispatched) == (5, 2, True)
    items = _items(session_factory, result.job_id)
    by_name = {Path(i.source).name: i for i in items}
    big, zero = by_name["big.png"], by_name["zero.png"]
    assert (big.status, big.error_code) == (ItemStatus.failed, "input_too_large")
    assert (zero.status, zero.error_code) == (ItemStatus.failed, "empty_input")
    assert f"over the input limit of {limit} bytes" in (big.error_message or "")
    assert "empty (0 bytes)" in (zero.error_message or "")
    for refused in (big, zero):
        assert "\n" not in (refused.error_message or "") and refused.finished_at is not None
        assert refused.dispatched_at is None and refused.input_sha256 is None
    good = [i.id for i in items if i.status == ItemStatus.queued]
    assert len(good) == 3 and queued_ids(session_factory, result.job_id) == good
    assert bell.rings == [("m", result.job_id)] * 2  # a doorbell per batch of the 3 good ones
    assert bell.batches == []
    assert _stored(blobs) == 3  # only the good inputs were stored

    again = _submit(
        session_factory, blobs, [str(folder)], max_input_bytes=limit, idempotency_key="k"
    )
    assert again.existing and again.job_id == result.job_id and again.dispatched

    res = make_resources(session_factory, blobs, FakeEngine())
    reports = [process_batch([], res) for _ in bell.rings]  # each doorbell: the next batch
    assert [(r.claimed, r.succeeded) for r in reports] == [(2, 2), (1, 1)]
    assert _job(session_factory, result.job_id).status == JobStatus.completed

    # A retry re-queues the refused items; the worker fails them again without reading them.
    refused_ids = [big.id, zero.id]
    assert sorted(requeue_failed(session_factory, result.job_id)) == sorted(refused_ids)
    report = process_batch(refused_ids, res)
    assert report.failed == 2
    again_items = {i.id: i for i in _items(session_factory, result.job_id)}
    assert [again_items[i].error_code for i in refused_ids] == ["input_too_large", "empty_input"]


def test_a_submit_whose_every_input_is_refused_ends_failed_at_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariants I5 and I6: a job with nothing left to run ends at submit (``failed``: every
    item failed), with no message sent and without waiting for a sweeper."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "zero.png").write_bytes(b"")
    bell = ListPublisher()
    result = _submit(session_factory, blobs, [str(folder)], bell)
    assert (result.item_count, result.failed) == (1, 1)
    assert bell.rings == [] and bell.batches == []
    job = _job(session_factory, result.job_id)
    assert job.status == JobStatus.failed and job.finished_at is not None


def test_a_refused_input_in_the_last_chunk_lets_the_big_job_finish(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariants I5 and I9: a big job's last chunk holds only a refused input (and rings no
    doorbell), and everything before it is done while it is written, by workers answering the
    doorbells rung so far; nothing queued is left for a worker's record to end the job, so the
    submit ends it (completed), not the sweeper a pass later."""
    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 4)
    folder = tmp_path / "photos"
    write_images(folder, 6)  # chunks of 2, 4 and then the empty file alone
    (folder / "zzz.png").write_bytes(b"")
    bell = ListPublisher()
    res = make_resources(session_factory, blobs, FakeEngine())
    done: list[int] = []
    answered = 0

    def work_off() -> None:
        nonlocal answered
        for _ in bell.rings[answered:]:
            done.append(process_batch([], res).succeeded)
        answered = len(bell.rings)

    with pause_at("submit:chunk_published", work_off):
        result = _submit(session_factory, blobs, [str(folder)], bell)
    assert result.complete and (result.item_count, result.failed) == (7, 1)
    assert done == [2, 2, 2] and len(bell.rings) == 3  # doorbells: 1 and 2; none for the last
    assert _job(session_factory, result.job_id).status == JobStatus.completed


def test_objects_empty_or_over_the_limit_fail_alone_from_their_listing(
    session_factory: SessionFactory, blobs: Blobs, s3_bucket: str, s3_client: Any
) -> None:
    """Invariant I6 for a bucket: judged from the listing's sizes before anything is read, an
    object over the limit and an empty one each fail their own item; the console's "folder"
    marker is no input; the good object is read in place by the worker."""
    ok = image_bytes((16, 16), 1)
    s3_client.put_object(Bucket=s3_bucket, Key="cat/big.png", Body=ok + b"\0")
    s3_client.put_object(Bucket=s3_bucket, Key="cat/empty.png", Body=b"")
    s3_client.put_object(Bucket=s3_bucket, Key="cat/", Body=b"")
    s3_client.put_object(Bucket=s3_bucket, Key="cat/ok.png", Body=ok)
    prefix = f"s3://{s3_bucket}/cat/"
    bell = ListPublisher()
    result = _submit(session_factory, blobs, [prefix], bell, max_input_bytes=len(ok))
    items = _items(session_factory, result.job_id)
    assert [(i.source, i.status, i.error_code) for i in items] == [
        (f"{prefix}big.png", ItemStatus.failed, "input_too_large"),
        (f"{prefix}empty.png", ItemStatus.failed, "empty_input"),
        (f"{prefix}ok.png", ItemStatus.queued, None),
    ]
    assert bell.rings == [("m", result.job_id)] and bell.batches == []
    assert queued_ids(session_factory, result.job_id) == [items[2].id]
    res = make_resources(session_factory, blobs, FakeEngine(), max_input_bytes=len(ok))
    report = process_batch([], res)  # the doorbell claims the good object's item only
    assert (report.claimed, report.succeeded) == (1, 1)
    assert _job(session_factory, result.job_id).status == JobStatus.completed


def test_a_manifest_entry_that_is_empty_fails_alone_but_a_bad_line_refuses_the_submit(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I6's two halves: a manifest entry naming an empty file is that item's failure
    (with its custom id kept); a line that is not valid JSON, or a source that does not exist,
    is the request's, and the submit is refused with nothing written."""
    folder = tmp_path / "m"
    write_images(folder, 1)
    (folder / "zero.png").write_bytes(b"")
    entries = [{"input": "img000.png", "id": "a"}, {"input": "zero.png", "id": "b"}]
    manifest = folder / "inputs.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    result = _submit(session_factory, blobs, [str(manifest)])
    items = _items(session_factory, result.job_id)
    assert [(i.custom_id, i.status, i.error_code) for i in items] == [
        ("a", ItemStatus.queued, None),
        ("b", ItemStatus.failed, "empty_input"),
    ]

    broken = folder / "broken.jsonl"
    broken.write_text(json.dumps(entries[1]) + "\n{oops\n")
    for sources, code in (
        ([str(broken)], "manifest_invalid"),
        ([str(folder / "zero.png"), str(tmp_path / "missing")], "source_not_found"),
    ):
        with pytest.raises(RequestError) as refused:
            _submit(session_factory, blobs, sources)
        assert refused.value.code == code
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
