"""Schedules of every kind (caption, extract, ask, locate) over an S3 prefix or a local folder,
on SQLite and PostgreSQL: each firing takes only what is new or changed, a local folder's files
are stored as ``submit`` stores them, one job per due time however many schedulers race, and a
request that ``submit`` refuses is refused at ``schedule add`` with the same code, nothing
written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, Schedule, ScheduleObject, SessionFactory, utcnow
from jobs.errors import RequestError
from jobs.fleet import Serving
from jobs.lifecycle import claim_next
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.submit.input_store import store_inputs
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest
from storage import Blobs, open_blobs
from tests.helpers import (
    INVOICE_SCHEMA,
    ListPublisher,
    image_bytes,
    migrated_session_factory,
    write_images,
    write_pdf,
)

DUE = timedelta(minutes=15)


@pytest.fixture
def s3_blobs(moto_server: str, s3_bucket: str) -> Blobs:
    return open_blobs(f"s3://{s3_bucket}/store")


def _request(kind: str, **params: Any) -> SubmitRequest:
    return SubmitRequest.of(kind, [], "m", batch_size=8, **params)


def _add(sf: SessionFactory, source: str, request: SubmitRequest, now: datetime) -> Schedule:
    return add_schedule(
        sf,
        name="inbox",
        source=source,
        request=request,
        every="15m",
        cron=None,
        max_prompt_chars=4000,
        now=now,
    )


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(
            session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.source))
        )


def _job(sf: SessionFactory, job_id: str) -> Job:
    with sf() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def _count(sf: SessionFactory, table: Any) -> int:
    with sf() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_a_caption_schedule_over_a_local_folder_takes_only_new_and_changed_files(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    sf = session_factory
    folder = tmp_path / "inbox"
    write_images(folder, 2)
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.jpg").write_bytes(image_bytes((40, 30), seed=7, fmt="JPEG"))
    (folder / "empty.png").write_bytes(b"")  # fails its own item, as at submit
    write_pdf(folder / "doc.pdf", 1)  # caption reads images, not documents
    (folder / "notes.txt").write_text("not an input")
    (folder / "._img000.png").write_bytes(b"macOS resource fork")  # dot files are skipped
    (folder / ".thumbs").mkdir()
    (folder / ".thumbs" / "t.png").write_bytes(image_bytes((8, 8), seed=1))
    start = utcnow()
    _add(sf, str(folder), _request("caption", prompt="Name the product."), start)
    bell = ListPublisher()
    assert fire_due_schedules(sf, blobs, bell, now=start) == []  # not due yet

    (first,) = fire_due_schedules(sf, blobs, bell, now=start + DUE)
    job = _job(sf, first)
    assert (job.kind, job.name, job.model, job.prompt) == (
        "caption",
        "inbox",
        "m",
        "Name the product.",
    )
    items = _items(sf, first)
    assert [i.source for i in items] == [
        str(folder / name) for name in ("empty.png", "img000.png", "img001.png", "sub/deep.jpg")
    ]
    empty, *images = items
    assert empty.request == {
        "input_error": {
            "code": "empty_input",
            "message": f"{folder}/empty.png: the file is empty (0 bytes).",
        }
    }
    for item in images:  # copied into the blob store, content-addressed, as submit does
        data = Path(item.source).read_bytes()
        assert item.input_sha256 == hashlib.sha256(data).hexdigest()
        assert blobs.read_uri(item.input_uri) == data
    # The empty file's item is written failed (docs/design.md#I6): no message names it.
    assert (empty.status, empty.error_code) == ("failed", "empty_input")
    # One doorbell for the job on its model's queue; it claims the images, never the failed.
    assert bell.rings == [("m", first)] and bell.batches == []
    claimed = claim_next(sf, worker="w", lease_seconds=60, serving=Serving("m", None, "none"))
    assert sorted(c.id for c in claimed) == sorted(i.id for i in images)

    assert fire_due_schedules(sf, blobs, bell, now=start + 2 * DUE) == []  # nothing new

    (folder / "img000.png").write_bytes(image_bytes((90, 90), seed=42))  # replaced
    stamp = (folder / "img001.png").stat().st_mtime_ns + 5_000_000_000
    os.utime(folder / "img001.png", ns=(stamp, stamp))  # touched: a new version too
    write_images(folder / "sub", 1, prefix="new")  # added
    (second,) = fire_due_schedules(sf, blobs, bell, now=start + 3 * DUE)
    assert [i.source for i in _items(sf, second)] == [
        str(folder / name) for name in ("img000.png", "img001.png", "sub/new000.png")
    ]
    assert fire_due_schedules(sf, blobs, bell, now=start + 4 * DUE) == []
    # One row per file in the folder: the two replaced versions are forgotten
    # (jobs.schedule_history), never processed again since what is listed stays.
    assert _count(sf, ScheduleObject) == 5


def test_an_ask_schedule_over_s3_asks_its_questions_about_new_images(
    session_factory: SessionFactory, s3_blobs: Blobs, s3_bucket: str, tmp_path: Path
) -> None:
    sf = session_factory
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="shots/a.png", Body=image_bytes((32, 32), seed=1))
    s3.put_object(Bucket=s3_bucket, Key="shots/b.jpg", Body=image_bytes((32, 32), 2, "JPEG"))
    s3.put_object(
        Bucket=s3_bucket, Key="shots/c.pdf", Body=write_pdf(tmp_path / "c.pdf", 1).read_bytes()
    )
    s3.put_object(Bucket=s3_bucket, Key="shots/notes.txt", Body=b"ignored")
    start = utcnow()
    questions = ["What brand is it?", "What colour is it?"]
    _add(
        sf,
        f"s3://{s3_bucket}/shots/",
        _request("ask", questions=questions, conversation=True),
        start,
    )
    bell = ListPublisher()
    (first,) = fire_due_schedules(sf, s3_blobs, bell, now=start + DUE)
    job = _job(sf, first)
    assert job.kind == "ask" and job.params["questions"] == questions
    assert job.params["conversation"] is True
    uris = [f"s3://{s3_bucket}/shots/{name}" for name in ("a.png", "b.jpg")]
    items = _items(sf, first)
    assert [(i.source, i.input_uri) for i in items] == list(zip(uris, uris, strict=True))

    assert fire_due_schedules(sf, s3_blobs, bell, now=start + 2 * DUE) == []
    s3.put_object(Bucket=s3_bucket, Key="shots/d.png", Body=image_bytes((32, 32), seed=4))
    (second,) = fire_due_schedules(sf, s3_blobs, bell, now=start + 3 * DUE)
    assert [i.source for i in _items(sf, second)] == [f"s3://{s3_bucket}/shots/d.png"]


def test_an_extract_schedule_over_a_local_folder_reads_documents(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    folder = tmp_path / "invoices"
    folder.mkdir()
    write_pdf(folder / "a.pdf", 2)
    (folder / "scan.png").write_bytes(image_bytes((64, 48), seed=3))
    start = utcnow()
    request = _request(
        "extract", schema=dict(INVOICE_SCHEMA), instructions="Totals in EUR.", pages="first"
    )
    _add(session_factory, str(folder), request, start)
    (job_id,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    job = _job(session_factory, job_id)
    assert job.kind == "extract" and job.params["schema"] == INVOICE_SCHEMA
    assert (job.params["instructions"], job.params["pages"]) == ("Totals in EUR.", "first")
    assert [Path(i.source).name for i in _items(session_factory, job_id)] == ["a.pdf", "scan.png"]


def test_a_local_folder_missing_here_is_left_to_a_scheduler_that_has_it(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    write_images(folder, 1)
    start = utcnow()
    schedule = _add(session_factory, str(folder), _request("caption"), start)
    folder.rename(tmp_path / "elsewhere")
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE) == []
    with session_factory() as session:
        row = session.get(Schedule, schedule.id)
    assert row is not None and row.next_due_at == schedule.next_due_at  # not claimed
    with pytest.raises(RequestError) as refused:  # run-now says why
        fire_due_schedules(session_factory, blobs, ListPublisher(), now=start, names=["inbox"])
    assert refused.value.code == "source_not_found"


def test_a_relative_folder_is_resolved_when_the_schedule_is_added(
    session_factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inbox").mkdir()
    monkeypatch.chdir(tmp_path)
    schedule = _add(session_factory, "inbox", _request("caption"), utcnow())
    assert schedule.source == str(tmp_path / "inbox")


def test_an_overlapping_firing_cannot_take_the_same_files_twice(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firing slower than the period: the next due time fires while the first is still storing
    its files. The unique (schedule, key, version) constraint lets one of them record them."""
    folder = tmp_path / "inbox"
    write_images(folder, 3)
    start = utcnow()
    _add(session_factory, str(folder), _request("caption"), start)
    overlapping: list[str] = []

    def slow_store(*args: Any) -> Any:
        if not overlapping:  # the next due time fires meanwhile, and completes
            overlapping.extend(
                fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 2 * DUE)
            )
        return store_inputs(*args)

    monkeypatch.setattr("jobs.schedules.store_inputs", slow_store)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE) == []
    assert len(overlapping) == 1
    assert _count(session_factory, Job) == 1 and _count(session_factory, Item) == 3


@pytest.mark.parametrize(
    ("kind", "params", "code"),
    [
        ("caption", {"prompt": " "}, "empty_prompt"),
        ("caption", {"prompt": "x" * 4001}, "prompt_too_long"),
        ("caption", {"batch_size": 0}, "invalid_option"),
        ("extract", {"schema": INVOICE_SCHEMA, "pages": "3-1"}, "invalid_pages"),
        ("extract", {"schema": INVOICE_SCHEMA, "dpi": 5}, "invalid_dpi"),
        ("extract", {"schema": {"type": "nonsense"}}, "schema_invalid"),
        ("ask", {}, "invalid_questions"),
        ("ask", {"questions": ["q"] * 65}, "invalid_questions"),
        ("ask", {"questions": ["fine", ""]}, "empty_prompt"),
        ("ask", {"questions": ["q"], "max_new_tokens": 10**6}, "invalid_option"),
    ],
)
def test_a_request_submit_refuses_is_refused_at_add_with_its_code(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    kind: str,
    params: dict[str, Any],
    code: str,
) -> None:
    folder = tmp_path / "inbox"
    write_images(folder, 1)
    request = SubmitRequest.of(kind, [str(folder)], "m", **{"batch_size": 8, **params})
    with pytest.raises(RequestError) as by_submit:
        submit_job(
            request,
            session_factory=session_factory,
            blobs=blobs,
            publisher=ListPublisher(),
            max_prompt_chars=4000,
        )
    with pytest.raises(RequestError) as by_add:
        _add(session_factory, str(folder), request, utcnow())
    assert by_add.value.code == by_submit.value.code == code
    assert _count(session_factory, Schedule) == 0 and _count(session_factory, Job) == 0


_RACER = """
import sys
from datetime import datetime
from jobs.db import make_engine, make_session_factory
from jobs.schedules import fire_due_schedules
from storage import open_blobs

class Bell:
    bell_limit = 64
    def ring(self, model, count, *, job_id=None, dispatched_at=None): pass
    def waiting(self, model): return None
    def publish(self, job_id, item_ids, model, dispatched_at=None): pass
    def oldest_waiting(self, model): return None

sf = make_session_factory(make_engine(sys.argv[1]))
now = datetime.fromisoformat(sys.argv[3])
while datetime.now(now.tzinfo) < datetime.fromisoformat(sys.argv[4]):
    pass  # start together
print(len(fire_due_schedules(sf, open_blobs(sys.argv[2]), Bell(), now=now)))
"""


def test_two_schedulers_racing_over_a_local_folder_create_one_job(
    db_url: str, tmp_path: Path
) -> None:
    sf = migrated_session_factory(db_url)
    folder = tmp_path / "inbox"
    write_images(folder, 5)
    start = utcnow()
    _add(sf, str(folder), _request("caption"), start)
    due = (start + DUE).isoformat()
    go = (utcnow() + timedelta(seconds=4)).isoformat()
    store = str(tmp_path / "blobs")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, db_url, store, due, go],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    created = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        created.append(int(out.strip()))
    assert sorted(created) == [0, 1]
    assert _count(sf, Job) == 1 and _count(sf, Item) == 5 and _count(sf, ScheduleObject) == 5


def test_a_locate_schedule_over_a_local_folder_takes_its_expressions_to_each_new_image(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    folder = tmp_path / "shelves"
    write_images(folder, 2)
    start = utcnow()
    expressions = ["the red bus", "the price label"]
    _add(session_factory, str(folder), _request("locate", expressions=expressions), start)
    bell = ListPublisher()
    (first,) = fire_due_schedules(session_factory, blobs, bell, now=start + DUE)
    job = _job(session_factory, first)
    assert job.kind == "locate" and job.params["expressions"] == expressions
    assert job.params["template"] == "llava" and job.params["max_new_tokens"] == 25
    assert len(_items(session_factory, first)) == 2
    (folder / "new.png").write_bytes(image_bytes((40, 30), seed=9))
    (second,) = fire_due_schedules(session_factory, blobs, bell, now=start + 2 * DUE)
    assert [Path(i.source).name for i in _items(session_factory, second)] == ["new.png"]
    with pytest.raises(RequestError) as refused:
        _add(session_factory, str(folder), _request("locate"), start)
    assert refused.value.code == "invalid_expressions"
