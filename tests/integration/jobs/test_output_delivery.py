"""Results delivered when a job ends (``--deliver-to``, jobs.delivery.output), on SQLite and
PostgreSQL, into a local folder and into S3 (moto's server): each format lands whole with its
errors file and its manifest; a job with no results still writes its files; txt sidecars
mirror nested input folders; a repeated delivery rewrites the same files and adds none; the
job records where (``status``'s ``output``); a schedule's target fills {schedule}, {job} and
{date} for each job it fires."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobs.control import retry_job
from jobs.db import Delivery, Job, SessionFactory, utcnow
from jobs.delivery import deliver_due, output, queue_deliveries
from jobs.delivery.handlers import handlers_for
from jobs.dispatch import Publisher
from jobs.lifecycle import cancel_job
from jobs.progress import describe_output
from jobs.queries import find_job, read_progress
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.settings import Settings
from jobs.states import ItemStatus, JobStatus
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import Blobs
from tests.bulk import bulk_job
from tests.helpers import ListPublisher, make_resources, write_images
from workers.local import run_job_locally, work_locally

FORMATS = ["jsonl", "csv", "openai", "txt"]


def _inputs(root: Path) -> Path:
    """Three images in nested folders and one empty file (it fails at submit: an error)."""
    write_images(root / "a", 2)
    write_images(root / "b" / "c", 1, prefix="deep")
    (root / "b" / "broken.png").write_bytes(b"")
    return root


def _run(
    sf: SessionFactory, blobs: Blobs, sources: list[str], target: str | None, fmt: str = "jsonl"
) -> str:
    request = SubmitRequest.of(
        "caption", sources, "tiny-llava", batch_size=8, output_uri=target, output_format=fmt
    )
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8)
    return run_job_locally(request, res, max_prompt_chars=4000).job_id


def _deliver(sf: SessionFactory, blobs: Blobs, job_id: str) -> int:
    return deliver_due(sf, handlers_for(sf, blobs, Settings()), among=[job_id])


def _folder(sf: SessionFactory, job_id: str) -> str:
    with sf() as session:
        uri = session.scalar(select(Job.output_uri).where(Job.id == job_id))
    assert uri is not None
    return uri


def _local_tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _s3_tree(s3_client: Any, uri: str) -> dict[str, bytes]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def _check_files(tree: dict[str, bytes], fmt: str, job_id: str) -> None:
    """What a job of ``_inputs`` writes in ``fmt``: three results, one error, the manifest."""
    manifest = json.loads(tree["manifest.json"])
    assert manifest["job_id"] == job_id and manifest["format"] == fmt
    assert manifest["results"] == 3 and manifest["errors"] == 1
    errors = [json.loads(line) for line in tree["errors.jsonl"].decode().splitlines()]
    assert len(errors) == 1
    if fmt == "openai":  # the OpenAI Batch error file's lines
        assert errors[0]["response"]["body"]["error"]["code"] == "empty_input"
        lines = [json.loads(line) for line in tree["results.jsonl"].decode().splitlines()]
        assert len(lines) == 3 and all(line["response"]["status_code"] == 200 for line in lines)
        assert set(tree) == {"results.jsonl", "errors.jsonl", "manifest.json"}
    elif fmt == "jsonl":
        assert errors[0]["status"] == "failed" and errors[0]["input"].endswith("broken.png")
        rows = [json.loads(line) for line in tree["results.jsonl"].decode().splitlines()]
        assert [r["status"] for r in rows] == ["succeeded"] * 3 and all(r["result"] for r in rows)
        assert set(tree) == {"results.jsonl", "errors.jsonl", "manifest.json"}
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(tree["results.csv"].decode())))
        assert len(rows) == 3 and all(r["result"] for r in rows)
        assert set(tree) == {"results.csv", "errors.jsonl", "manifest.json"}
    else:  # txt: the sidecars mirror the input folders under the job's folder
        assert set(tree) == {
            "a/img000.txt",
            "a/img001.txt",
            "b/c/deep000.txt",
            "errors.jsonl",
            "manifest.json",
        }
        assert all(tree[name] for name in tree if name.endswith(".txt"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_lands_whole_in_a_local_folder(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, fmt: str
) -> None:
    """Before: a job's end sent nothing; a pipeline had to poll and export."""
    out = tmp_path / "out"
    job_id = _run(session_factory, blobs, [str(_inputs(tmp_path / "in"))], str(out), fmt)
    folder = _folder(session_factory, job_id)
    assert folder == f"{out}/{job_id}/"  # no {job}: the job's own folder under the target
    assert not out.exists()  # nothing before a sweeper (or run) delivers it
    assert _deliver(session_factory, blobs, job_id) == 1
    _check_files(_local_tree(Path(folder)), fmt, job_id)
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_lands_whole_in_s3(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    s3_client: Any,
    s3_bucket: str,
    fmt: str,
) -> None:
    job_id = _run(
        session_factory, blobs, [str(_inputs(tmp_path / "in"))], f"s3://{s3_bucket}/exports", fmt
    )
    folder = _folder(session_factory, job_id)
    assert folder == f"s3://{s3_bucket}/exports/{job_id}/"
    assert _deliver(session_factory, blobs, job_id) == 1
    _check_files(_s3_tree(s3_client, folder), fmt, job_id)


def test_a_job_with_no_results_still_writes_its_files(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A pipeline waiting for the files is never left waiting: an empty results file (a csv of
    its header), every item in the errors file, the manifest."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    job_id = _run(session_factory, blobs, [str(tmp_path / "in")], str(tmp_path / "out"), "csv")
    _deliver(session_factory, blobs, job_id)
    tree = _local_tree(Path(_folder(session_factory, job_id)))
    header = tree["results.csv"].decode().splitlines()
    assert len(header) == 1 and "finish_reason" in header[0]  # the header alone
    assert len(tree["errors.jsonl"].decode().splitlines()) == 1
    assert json.loads(tree["manifest.json"])["results"] == 0


def test_a_repeated_delivery_rewrites_the_same_files(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, s3_client: Any, s3_bucket: str
) -> None:
    """A sweeper that wrote the files and died before recording it: the next one writes the
    same names again (the delivery made pending again stands for the lost record), so the
    folder holds one set of files, not two."""
    job_id = _run(
        session_factory, blobs, [str(_inputs(tmp_path / "in"))], f"s3://{s3_bucket}/p/", "jsonl"
    )
    _deliver(session_factory, blobs, job_id)
    folder = _folder(session_factory, job_id)
    first = _s3_tree(s3_client, folder)
    with session_factory.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id)
            .values(
                status="pending", next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC), finished_at=None
            )
        )
    assert _deliver(session_factory, blobs, job_id) == 1
    assert _s3_tree(s3_client, folder) == first
    bucket_keys = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert len(bucket_keys) == 3


def test_status_says_where_the_results_were_written(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _run(session_factory, blobs, [str(_inputs(tmp_path / "in"))], str(tmp_path / "o"))
    folder = _folder(session_factory, job_id)
    with session_factory() as session:
        before = read_progress(session, find_job(session, job_id)).as_dict()["output"]
    assert before["state"] == "pending" and before["attempts"] == 0 and before["uri"] == folder
    _deliver(session_factory, blobs, job_id)
    with session_factory() as session:
        after = read_progress(session, find_job(session, job_id)).as_dict()["output"]
    assert after["state"] == "written"
    assert after["manifest"] == f"{folder}manifest.json"
    assert (after["results"], after["errors"]) == (3, 1)
    assert describe_output(after).startswith(f"results written to {folder} (jsonl: 3 result")


def test_a_write_that_fails_is_recorded_and_tried_again(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A target that cannot be written (a file where its folder should be): the delivery stays
    pending with the error, and ``status`` says so; once the way is clear, the next try
    writes it."""
    blocker = tmp_path / "out"
    job_id = _run(session_factory, blobs, [str(_inputs(tmp_path / "in"))], str(blocker))
    blocker.write_text("in the way")
    assert _deliver(session_factory, blobs, job_id) == 0
    with session_factory() as session:
        output = read_progress(session, find_job(session, job_id)).as_dict()["output"]
    assert output["state"] == "pending" and output["attempts"] == 1 and output["last_error"]
    assert "try 1 failed" in describe_output(output)
    blocker.unlink()
    with session_factory.begin() as session:
        session.execute(update(Delivery).values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC)))
    assert _deliver(session_factory, blobs, job_id) == 1
    assert (Path(_folder(session_factory, job_id)) / "manifest.json").is_file()


def test_a_schedule_fills_its_target_for_each_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """{schedule} is the schedule's name (one safe segment), {job} each job's id (no folder of
    its own is added then), {date} the day it fired; the job stores it filled."""
    source = tmp_path / "drop"
    write_images(source, 2)
    template = str(tmp_path / "out" / "{schedule}" / "{date}" / "run-{job}")
    request = SubmitRequest.of("caption", [], "tiny-llava", output_uri=template)
    add_schedule(
        session_factory,
        name="nightly/shop",
        source=str(source),
        request=request,
        every="1h",
        cron=None,
        max_prompt_chars=4000,
    )
    publisher: Publisher = ListPublisher()
    created = fire_due_schedules(
        session_factory,
        blobs,
        publisher,
        now=datetime(2031, 5, 6, 7, 0, tzinfo=UTC),
        names=["nightly/shop"],
    )
    assert len(created) == 1
    with session_factory() as session:
        job = session.get(Job, created[0])
        assert job is not None
        uri, made = job.output_uri, job.created_at
    assert uri == f"{tmp_path}/out/nightly_shop/{made:%Y-%m-%d}/run-{created[0]}/"


def test_a_schedule_without_job_gets_a_folder_per_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, s3_bucket: str
) -> None:
    source = tmp_path / "drop"
    write_images(source, 1)
    request = SubmitRequest.of(
        "caption",
        [],
        "tiny-llava",
        output_uri=f"s3://{s3_bucket}/{{schedule}}/",
        output_format="csv",
    )
    add_schedule(
        session_factory,
        name="hourly",
        source=str(source),
        request=request,
        every="1h",
        cron=None,
        max_prompt_chars=4000,
    )
    created = fire_due_schedules(
        session_factory,
        blobs,
        ListPublisher(),
        now=datetime(2031, 1, 1, tzinfo=UTC),
        names=["hourly"],
    )
    with session_factory() as session:
        job = session.get(Job, created[0])
        assert job is not None
        assert job.output_uri == f"s3://{s3_bucket}/hourly/{created[0]}/"
        assert job.output_format == "csv"


def test_a_big_job_is_written_a_page_at_a_time_in_bounded_memory(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    s3_client: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20,000 items (a results file of some 4 MB), read 500 at a time: into a local folder the
    memory the delivery holds stays well under the file (measured there: moto's server
    runs in this process and holds what it receives); into S3, with 64 KiB of spool in memory
    (the rest on disk), the object is whole."""
    monkeypatch.setattr(output, "PAGE", 500)
    monkeypatch.setattr(output, "SPOOL_BYTES", 64 * 1024)
    n = 20_000
    job_id = bulk_job(
        session_factory, n, item_status=ItemStatus.succeeded, job_status=JobStatus.completed
    )

    def deliver_to(folder: str) -> None:
        now = utcnow()  # as a job's end stamps it and its deliveries (finalise)
        with session_factory.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(output_uri=folder, output_format="jsonl", finished_at=now)
            )
            queue_deliveries(
                session, job_id, "completed", notify_url=None, output_uri=folder, now=now
            )
        assert _deliver(session_factory, blobs, job_id) == 1

    tracemalloc.start()
    try:
        deliver_to(f"{tmp_path / 'big'}/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = (tmp_path / "big" / "results.jsonl").stat().st_size
    assert size > 4_000_000 and peak < size / 2, (peak, size)  # 1.2 MB measured
    deliver_to(f"s3://{s3_bucket}/big/")
    body = s3_client.get_object(Bucket=s3_bucket, Key="big/results.jsonl")["Body"].read()
    assert body == (tmp_path / "big" / "results.jsonl").read_bytes()
    assert body.count(b"\n") == n


def test_a_retried_job_delivers_again_when_it_ends_again(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Each end of a job is delivered: a retry reopens it, and its next end rewrites the same
    files in the same folder (no second set); ``status`` shows the last end's."""
    out = tmp_path / "out"
    job_id = _run(session_factory, blobs, [str(_inputs(tmp_path / "in"))], str(out))
    _deliver(session_factory, blobs, job_id)
    folder = Path(_folder(session_factory, job_id))
    first = json.loads((folder / "manifest.json").read_text())
    retried = retry_job(session_factory, ListPublisher(), job_id, batch_size=8, codes=None)
    assert len(retried.item_ids) == 1
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    assert work_locally(job_id, res)
    assert _deliver(session_factory, blobs, job_id) == 1
    with session_factory() as session:
        rows = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        shown = read_progress(session, find_job(session, job_id)).as_dict()["output"]
    assert [r.status for r in rows] == ["delivered", "delivered"]
    assert shown["state"] == "written" and shown["attempts"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "errors.jsonl",
        "manifest.json",
        "results.jsonl",
    ]
    again = json.loads((folder / "manifest.json").read_text())
    assert again["results"] + again["errors"] == first["results"] + first["errors"] == 4


def test_a_sweeper_writes_only_within_its_output_prefixes(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """LLAVA_BATCH_OUTPUT_PREFIXES where the results are written: a job submitted where it was
    not set (or was another) is held to the sweeper's, and given up at once, nothing written
    (a folder only through a link out of a listed one counts as outside it)."""
    listed = tmp_path / "allowed"
    listed.mkdir()
    (listed / "link").symlink_to(tmp_path, target_is_directory=True)
    outside = _run(session_factory, blobs, [str(_inputs(tmp_path / "in"))], str(tmp_path / "o"))
    linked = _run(session_factory, blobs, [str(tmp_path / "in")], str(listed / "link" / "x"))
    inside = _run(session_factory, blobs, [str(tmp_path / "in")], str(listed / "ok"))
    settings = Settings(output_prefixes=str(listed))
    handlers = handlers_for(session_factory, blobs, settings)
    assert deliver_due(session_factory, handlers, among=[outside, linked, inside]) == 1
    assert (listed / "ok" / inside / "manifest.json").is_file()
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()
    with session_factory() as session:
        refused = read_progress(session, find_job(session, outside)).as_dict()["output"]
    assert refused["state"] == "abandoned" and refused["attempts"] == 1
    assert "LLAVA_BATCH_OUTPUT_PREFIXES" in refused["last_error"]


def _blocked_end(sf: SessionFactory, blobs: Blobs, tmp_path: Path) -> str:
    """A job of ``_inputs`` ended, its first write failed (a file where its folder goes), then
    retried: open again, that end's delivery still pending."""
    blocker = tmp_path / "out"
    job_id = _run(sf, blobs, [str(_inputs(tmp_path / "in"))], str(blocker))
    blocker.write_text("in the way")
    assert _deliver(sf, blobs, job_id) == 0
    blocker.unlink()
    retried = retry_job(sf, ListPublisher(), job_id, batch_size=8, codes=None)
    assert len(retried.item_ids) == 1
    return job_id


def _all_due(sf: SessionFactory, job_id: str) -> None:
    with sf.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.job_id == job_id, Delivery.status == "pending")
            .values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC))
        )


def test_an_earlier_ends_write_is_not_made_while_a_retry_runs(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The first end's delivery, tried again after a retry reopened the job: it would write a
    manifest (the file a pipeline waits for) over a job still running, its retried item in
    neither file. It is superseded instead: the next end writes the folder."""
    sf = session_factory
    job_id = _blocked_end(sf, blobs, tmp_path)
    _all_due(sf, job_id)
    assert _deliver(sf, blobs, job_id) == 0
    assert not (Path(_folder(sf, job_id)) / "manifest.json").exists()
    with sf() as session:
        (first,) = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
    assert first.status == "abandoned" and "retried" in (first.last_error or "")
    with sf() as session:  # status speaks of the end to come, not of the superseded one
        shown = read_progress(session, find_job(session, job_id)).as_dict()["output"]
    assert shown["state"] == "waiting"
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8)
    assert work_locally(job_id, res)
    assert _deliver(sf, blobs, job_id) == 1
    manifest = json.loads((Path(_folder(sf, job_id)) / "manifest.json").read_text())
    assert (manifest["results"], manifest["errors"]) == (3, 1)


def test_an_earlier_ends_write_never_replaces_a_later_ends(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A retried job that ended again (cancelled, here) before its first end's delivery was
    tried again: the later end's files stay, not overwritten by a manifest of the first end's
    status."""
    sf = session_factory
    job_id = _blocked_end(sf, blobs, tmp_path)
    cancel_job(sf, job_id)
    with sf() as session:
        assert session.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"
        rows = session.scalars(
            select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.created_at)
        ).all()
        first, last = rows[0].id, rows[-1].id
    # The later end's delivery goes first; the first end's is tried after it.
    with sf.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == last)
            .values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == first)
            .values(next_attempt_at=datetime(2000, 1, 2, tzinfo=UTC))
        )
    _deliver(sf, blobs, job_id)
    manifest = json.loads((Path(_folder(sf, job_id)) / "manifest.json").read_text())
    assert manifest["status"] == "cancelled"
    with sf() as session:
        assert session.get(Delivery, first).status == "abandoned"  # type: ignore[union-attr]
        assert session.get(Delivery, last).status == "delivered"  # type: ignore[union-attr]
