"""Extraction schedules over an S3 prefix (moto server), as they were before schedules had kinds:
new or replaced objects are processed once, a firing with nothing new creates no job, racing
schedulers never create the same job twice, and rows stored before kinds still fire. Other kinds
and local folders: test_schedule_kinds.py."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs.db import Item, Job, Schedule, ScheduleObject, SessionFactory, utcnow
from jobs.errors import RequestError
from jobs.fleet import Serving
from jobs.lifecycle import claim_next
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.submit.request import SubmitRequest
from storage import Blobs, open_blobs
from tests.helpers import INVOICE_SCHEMA, ListPublisher, migrated_session_factory, write_pdf

Doorbell = ListPublisher
_SERVING_M = Serving("m", None, "none")  # a worker of the schedules' model


@pytest.fixture
def s3_blobs(moto_server: str, s3_bucket: str) -> Blobs:
    return open_blobs(f"s3://{s3_bucket}/store")


def _extract() -> SubmitRequest:
    return SubmitRequest.of(
        "extract", [], "m", max_new_tokens=64, batch_size=8, schema=dict(INVOICE_SCHEMA)
    )


def _add(sf: SessionFactory, source: str, **kw: Any) -> Schedule:
    fields: dict[str, Any] = dict(
        name="invoices",
        source=source,
        request=_extract(),
        every="15m",
        cron=None,
        max_prompt_chars=4000,
    )
    fields.update(kw)
    return add_schedule(sf, **fields)


def _sources(sf: SessionFactory, job_id: str) -> list[str]:
    with sf() as session:
        return sorted(session.scalars(select(Item.source).where(Item.job_id == job_id)))


def test_a_schedule_processes_new_and_replaced_objects_once(
    session_factory: SessionFactory, s3_blobs: Blobs, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    s3 = boto3.client("s3")
    pdf = write_pdf(tmp_path / "a.pdf", 1).read_bytes()
    for name in ("a.pdf", "b.pdf"):
        s3.put_object(Bucket=s3_bucket, Key=f"incoming/{name}", Body=pdf)
    s3.put_object(Bucket=s3_bucket, Key="incoming/notes.txt", Body=b"ignored")
    start = utcnow()
    schedule = _add(session_factory, f"s3://{s3_bucket}/incoming/", now=start)
    bell = Doorbell()
    assert fire_due_schedules(session_factory, s3_blobs, bell, now=start) == []  # not due yet

    first = fire_due_schedules(session_factory, s3_blobs, bell, now=start + timedelta(minutes=15))
    assert len(first) == 1
    assert _sources(session_factory, first[0]) == [
        f"s3://{s3_bucket}/incoming/a.pdf",
        f"s3://{s3_bucket}/incoming/b.pdf",
    ]

    later = start + timedelta(minutes=30)
    assert fire_due_schedules(session_factory, s3_blobs, bell, now=later) == []  # nothing new

    s3.put_object(Bucket=s3_bucket, Key="incoming/c.pdf", Body=pdf)  # added
    s3.put_object(Bucket=s3_bucket, Key="incoming/a.pdf", Body=pdf + b"\n%changed")  # replaced
    second = fire_due_schedules(session_factory, s3_blobs, bell, now=later + timedelta(minutes=15))
    assert len(second) == 1
    assert _sources(session_factory, second[0]) == [
        f"s3://{s3_bucket}/incoming/a.pdf",
        f"s3://{s3_bucket}/incoming/c.pdf",
    ]
    with session_factory() as session:
        row = session.get(Schedule, schedule.id)
        job = session.get(Job, second[0])
    assert row is not None and row.last_job_id == second[0]
    assert row.next_due_at == later + timedelta(minutes=30)
    assert job is not None and job.kind == "extract" and job.params["schema"] == INVOICE_SCHEMA
    # Each firing rang once for its job (two items, batches of eight), and only then.
    assert bell.rings == [("m", first[0]), ("m", second[0])] and bell.batches == []


def test_an_extraction_schedule_stored_before_schedules_had_kinds_fires_as_it_did(
    session_factory: SessionFactory, s3_blobs: Blobs, s3_bucket: str, tmp_path: Path
) -> None:
    """Rows written by earlier versions: the parameters flat in ``params``, the instructions in
    ``prompt``, and the (key, ETag) pairs they already processed."""
    import boto3

    s3 = boto3.client("s3")
    pdf = write_pdf(tmp_path / "a.pdf", 1).read_bytes()
    for name in ("a.pdf", "b.pdf"):
        s3.put_object(Bucket=s3_bucket, Key=f"old/{name}", Body=pdf)
    etag = s3.head_object(Bucket=s3_bucket, Key="old/a.pdf")["ETag"].strip('"')
    start = utcnow()
    with session_factory.begin() as session:
        row = Schedule(
            name="legacy",
            kind="extract",
            source=f"s3://{s3_bucket}/old/",
            every_seconds=900,
            prompt="Totals in EUR.",
            params={
                "model": "m",
                "max_new_tokens": 64,
                "batch_size": 8,
                "schema": INVOICE_SCHEMA,
                "pages": "first",
                "dpi": 100,
            },
            paused=False,
            next_due_at=start,
        )
        session.add(row)
        session.flush()
        session.add(ScheduleObject(schedule_id=row.id, key="old/a.pdf", etag=etag, job_id="j0"))
    bell = Doorbell()
    (job_id,) = fire_due_schedules(session_factory, s3_blobs, bell, now=start)
    assert _sources(session_factory, job_id) == [f"s3://{s3_bucket}/old/b.pdf"]
    with session_factory() as session:
        job = session.get(Job, job_id)
    assert job is not None and (job.kind, job.name, job.model) == ("extract", "legacy", "m")
    assert job.params["schema"] == INVOICE_SCHEMA and job.params["instructions"] == "Totals in EUR."
    assert (job.params["pages"], job.params["dpi"], job.params["max_new_tokens"]) == (
        "first",
        100,
        64,
    )
    assert job.prompt is not None and "Totals in EUR." in job.prompt
    assert bell.rings == [("m", job_id)]  # rung on the queue of the model the row names
    claimed = claim_next(session_factory, worker="w", lease_seconds=60, serving=_SERVING_M)
    assert [c.source for c in claimed] == [f"s3://{s3_bucket}/old/b.pdf"]


def test_paused_schedules_do_not_fire_and_bad_definitions_are_refused(
    session_factory: SessionFactory, s3_blobs: Blobs, s3_bucket: str
) -> None:
    start = utcnow()
    schedule = _add(
        session_factory, f"s3://{s3_bucket}/x/", cron="*/5 * * * *", every=None, now=start
    )
    assert schedule.next_due_at > start and schedule.next_due_at.minute % 5 == 0
    with session_factory.begin() as session:
        session.get(Schedule, schedule.id).paused = True  # type: ignore[union-attr]
    assert (
        fire_due_schedules(session_factory, s3_blobs, Doorbell(), now=start + timedelta(hours=1))
        == []
    )
    for kw, code in [
        (dict(name="invoices"), "schedule_exists"),
        (dict(name="b", every="soon"), "invalid_schedule"),
        (dict(name="c", every=None, cron="not cron"), "invalid_schedule"),
        (dict(name="d", cron="* * * * *"), "invalid_schedule"),
        (dict(name="e", source="/no/such/dir"), "source_not_found"),
        (dict(name="f", source="https://example.com/x/"), "invalid_source"),
        (dict(name="g", source="s3://b/x/"), "invalid_uri"),  # a one-letter bucket
    ]:
        with pytest.raises(RequestError) as refused:
            _add(session_factory, kw.pop("source", f"s3://{s3_bucket}/x/"), **kw)  # type: ignore[arg-type]
        assert refused.value.code == code, kw


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


def test_two_scheduler_processes_racing_create_one_job(
    db_url: str, s3_blobs: Blobs, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    sf = migrated_session_factory(db_url)
    pdf = write_pdf(tmp_path / "a.pdf", 1).read_bytes()
    for i in range(5):
        boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"in/{i}.pdf", Body=pdf)
    start = utcnow()
    _add(sf, f"s3://{s3_bucket}/in/", now=start)
    due = (start + timedelta(minutes=20)).isoformat()
    go = (utcnow() + timedelta(seconds=4)).isoformat()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, db_url, f"s3://{s3_bucket}/store", due, go],
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
    with sf() as session:
        jobs = list(session.scalars(select(Job)))
        items = list(session.scalars(select(Item)))
    assert len(jobs) == 1 and len(items) == 5


def test_timings_that_never_fire_or_fire_every_second_are_refused(
    session_factory: SessionFactory,
) -> None:
    start = utcnow()
    for every, cron in [
        (None, "0 0 31 2 *"),  # February has no 31st: never fires
        (None, "0 0 30 2 *"),
        (None, "0 0 29 2 *"),  # leap days only: four years apart
        (None, "* * * * * *"),  # six fields: croniter reads seconds, fires every second
        (None, "*/5 * * * * 0"),
        (None, "@daily"),
        ("30000d", None),
        ("99999999999999d", None),
        ("9" * 5000 + "d", None),  # more digits than int() converts
        ("367d", None),
        ("30s", None),
    ]:
        with pytest.raises(RequestError) as refused:
            _add(session_factory, "s3://bucket/x/", every=every, cron=cron, now=start)
        assert refused.value.code == "invalid_schedule", (every, cron)
        assert "\n" not in refused.value.message
    with pytest.raises(RequestError) as refused:
        _add(session_factory, "s3://bucket/x/", name="n" * 201, now=start)
    assert refused.value.code == "invalid_name"
    with session_factory() as session:
        assert list(session.scalars(select(Schedule))) == []  # nothing written
    # At the bounds: once a year, every 366 days, every minute.
    _add(session_factory, "s3://bucket/x/", name="yearly", every=None, cron="0 0 1 1 *", now=start)
    _add(session_factory, "s3://bucket/x/", name="longest", every="366d", now=start)
    _add(session_factory, "s3://bucket/x/", name="shortest", every="1m", now=start)


def test_run_now_fires_a_paused_schedule_which_stays_paused(
    session_factory: SessionFactory, s3_blobs: Blobs, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    pdf = write_pdf(tmp_path / "a.pdf", 1).read_bytes()
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="inbox/a.pdf", Body=pdf)
    start = utcnow()
    schedule = _add(session_factory, f"s3://{s3_bucket}/inbox/", now=start)
    with session_factory.begin() as session:
        session.get(Schedule, schedule.id).paused = True  # type: ignore[union-attr]
    bell = Doorbell()
    later = start + timedelta(hours=1)
    assert fire_due_schedules(session_factory, s3_blobs, bell, now=later) == []  # no clock
    created = fire_due_schedules(session_factory, s3_blobs, bell, now=later, names=["invoices"])
    assert len(created) == 1
    assert _sources(session_factory, created[0]) == [f"s3://{s3_bucket}/inbox/a.pdf"]
    with session_factory() as session:
        row = session.get(Schedule, schedule.id)
    assert row is not None and row.paused and row.last_job_id == created[0]
