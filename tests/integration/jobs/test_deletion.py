"""Deleting jobs, on SQLite and PostgreSQL: a job leaves every view in the transaction that
starts its deletion, goes a bounded batch at a time, and a deletion stopped half-way (a crash)
is finished by the next pass; only ended jobs are deleted, all named or none. Each race is
forced at a real point (``tests.interleaving``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from jobs.db import BlobCandidate, Item, ItemPage, Job, SessionFactory, utcnow
from jobs.errors import JobNotFinishedError, JobNotFoundError
from jobs.hooks import pause_at
from jobs.lifecycle import (
    claim_next,
    delete_step,
    finalise_jobs,
    jobs_being_deleted,
    mark_deleting,
    mark_retained,
    requeue_failed,
)
from jobs.maintenance import run_maintenance
from jobs.queries import count_jobs, find_job, list_recent_jobs
from jobs.retention.blobs import queue_inputs_of
from jobs.retention.purge import purge
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.states import JobStatus
from jobs.submit.request import SubmitRequest
from storage import Blobs
from tests.helpers import ListPublisher, make_settings, submit_captions, write_images
from tests.interleaving import Interleaving


def _queued(sf: SessionFactory) -> list[tuple[str, str]]:
    """The inputs queued for collection, one per queued row."""
    with sf() as session:
        return [tuple(r) for r in session.execute(select(BlobCandidate.uri, BlobCandidate.sha256))]


def _ended(
    sf: SessionFactory, blobs: Blobs, tmp_path: Path, name: str, n: int, **fields: object
) -> str:
    """A job of ``n`` items that has ended completed (its items succeeded, one with a page)."""
    job_id, ids = submit_captions(sf, blobs, tmp_path / name, n=n, **fields)
    now = utcnow()
    with sf.begin() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id)
            .values(status="succeeded", result_text="a caption", finished_at=now)
        )
        session.add(ItemPage(item_id=ids[0], page_number=1, result_text="page one"))
    assert finalise_jobs(sf, [job_id]) == 1
    return job_id


def _rows(sf: SessionFactory, job_id: str) -> tuple[int, int, int]:
    """The job's rows left: jobs, items, pages."""
    with sf() as session:
        jobs = session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id))
        items = session.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id))
        pages = session.scalar(
            select(func.count())
            .select_from(ItemPage)
            .join(Item, Item.id == ItemPage.item_id, isouter=True)
            .where(Item.id.is_(None) | (Item.job_id == job_id))
        )
    return int(jobs or 0), int(items or 0), int(pages or 0)


def _delete_all(sf: SessionFactory, job_id: str, *, batch: int = 2) -> int:
    """Runs a deletion's steps to the end, queueing inputs as purge does; returns how many
    steps deleted items."""
    steps = 0
    while True:
        step = delete_step(sf, job_id, batch=batch, queue_inputs=queue_inputs_of)
        assert step is not None
        if step.job_gone:
            return steps
        steps += 1


def test_a_deleted_job_leaves_no_row_and_hands_its_inputs_over(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended(session_factory, blobs, tmp_path, "a", 5)
    with session_factory.begin() as session:  # a user's own object (no sha256): never queued
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.seq == 0)
            .values(input_uri="s3://theirs/a.png", input_sha256=None)
        )
    with session_factory() as session:
        inputs = {
            (uri, sha)
            for uri, sha in session.execute(
                select(Item.input_uri, Item.input_sha256).where(Item.job_id == job_id)
            )
        }
    mark_deleting(session_factory, [job_id])
    assert _delete_all(session_factory, job_id, batch=2) == 3  # 2 + 2 + 1, bounded
    assert _rows(session_factory, job_id) == (0, 0, 0)
    queued = _queued(session_factory)
    assert sorted(queued) == sorted(i for i in inputs if i[1] is not None) and len(queued) == 4


def test_keep_inputs_hands_nothing_over(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended(session_factory, blobs, tmp_path, "a", 3)
    mark_deleting(session_factory, [job_id], keep_inputs=True)
    _delete_all(session_factory, job_id)
    assert _queued(session_factory) == [] and _rows(session_factory, job_id) == (0, 0, 0)


def test_only_ended_jobs_are_deleted_and_all_named_or_none(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A job that has not ended is refused with its own code (exit 8), and then nothing is
    marked, not even the ended jobs named beside it."""
    ended = _ended(session_factory, blobs, tmp_path, "a", 2)
    running, _ = submit_captions(session_factory, blobs, tmp_path / "b", n=2)
    with pytest.raises(JobNotFinishedError) as refused:
        mark_deleting(session_factory, [ended, running])
    assert refused.value.code == "job_not_finished" and int(refused.value.exit_code) == 8
    assert running in refused.value.message
    with session_factory() as session:
        assert session.get(Job, ended).status == JobStatus.completed  # type: ignore[union-attr]
    with pytest.raises(JobNotFoundError):
        mark_deleting(session_factory, [ended, "no-such-job"])
    assert jobs_being_deleted(session_factory) == []


def test_a_job_being_deleted_is_gone_for_every_command_from_the_first_step(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Nothing half-deleted is ever shown: paused between two batches (half its items gone,
    its row still there), the job is found by no lookup or listing, nor counted, and a second
    delete of it is "no such job"."""
    kept = _ended(session_factory, blobs, tmp_path, "kept", 1)
    job_id = _ended(session_factory, blobs, tmp_path, "a", 6)
    mark_deleting(session_factory, [job_id])
    seen: dict[str, object] = {}

    def look() -> None:
        with session_factory() as session:
            seen["rows"] = _rows(session_factory, job_id)
            with pytest.raises(JobNotFoundError):
                find_job(session, job_id)
            with pytest.raises(JobNotFoundError):
                find_job(session, job_id[:8])
            seen["listed"] = [p.id for p in list_recent_jobs(session)]
            seen["count"] = count_jobs(session)
        with pytest.raises(JobNotFoundError):
            mark_deleting(session_factory, [job_id])

    first = delete_step(session_factory, job_id, batch=2, queue_inputs=lambda _s, _r: None)
    assert first is not None and first.items == 2
    Interleaving("delete:batch").run(lambda: _delete_all(session_factory, job_id), look)
    assert seen["rows"][:2] == (1, 4), "the window is half-way through the deletion"  # type: ignore[index]
    assert seen["listed"] == [kept] and seen["count"] == 1
    assert _rows(session_factory, job_id) == (0, 0, 0)


def test_a_deletion_stopped_half_way_is_finished_by_the_next_pass(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Crash half-way (an error inside a batch's transaction): that batch rolls back, the job
    stays ``deleting`` and hidden, and the next pass finishes it."""
    job_id = _ended(session_factory, blobs, tmp_path, "a", 5)
    mark_deleting(session_factory, [job_id])
    calls = []

    def crash() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")

    with pause_at("delete:batch", crash), pytest.raises(RuntimeError):
        _delete_all(session_factory, job_id)
    assert _rows(session_factory, job_id)[:2] == (1, 3)  # the first batch only
    assert jobs_being_deleted(session_factory) == [job_id]
    _delete_all(session_factory, job_id)
    assert _rows(session_factory, job_id) == (0, 0, 0)


def test_retention_counts_from_the_end_and_deletes_only_what_has_passed(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """retained_until is set when a job ends (its finish + retain), cleared by a retry that
    opens it again; jobs without retention (older ones too) are never due."""
    retained = _ended(session_factory, blobs, tmp_path, "a", 2, retain_seconds=3600)
    forever = _ended(session_factory, blobs, tmp_path, "b", 2)
    with session_factory() as session:
        job = session.get(Job, retained)
        assert job is not None and job.finished_at is not None
        assert job.retained_until == job.finished_at + timedelta(seconds=3600)
        until = job.retained_until
        assert session.get(Job, forever).retained_until is None  # type: ignore[union-attr]
    assert mark_retained(session_factory, now=until - timedelta(seconds=1), limit=10) == 0
    assert mark_retained(session_factory, now=until + timedelta(seconds=1), limit=10) == 1
    assert jobs_being_deleted(session_factory) == [retained]
    far = utcnow() + timedelta(days=3650)
    assert mark_retained(session_factory, now=far, limit=10) == 0  # `forever` is never due


def test_a_retry_opens_the_job_again_and_clears_its_date(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ids = submit_captions(session_factory, blobs, tmp_path / "a", n=2, retain_seconds=60)
    with session_factory.begin() as session:
        session.execute(
            update(Item).where(Item.job_id == job_id).values(status="failed", finished_at=utcnow())
        )
    finalise_jobs(session_factory, [job_id])
    assert len(requeue_failed(session_factory, job_id)) == 2
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.queued
        assert job.retained_until is None and job.retain_seconds == 60
    far = utcnow() + timedelta(days=1)
    assert mark_retained(session_factory, now=far, limit=10) == 0  # open: never deleted


def test_a_retry_of_a_job_being_deleted_is_no_such_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ids = submit_captions(session_factory, blobs, tmp_path / "a", n=2)
    with session_factory.begin() as session:
        session.execute(
            update(Item).where(Item.job_id == job_id).values(status="failed", finished_at=utcnow())
        )
    finalise_jobs(session_factory, [job_id])
    mark_deleting(session_factory, [job_id])
    with pytest.raises(JobNotFoundError):
        requeue_failed(session_factory, job_id)
    with session_factory() as session:
        assert session.get(Job, job_id).status == JobStatus.deleting  # type: ignore[union-attr]


def test_deleting_frees_the_idempotency_key(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    first = _ended(session_factory, blobs, tmp_path, "a", 1, idempotency_key="nightly")
    mark_deleting(session_factory, [first])
    again, _ = submit_captions(
        session_factory, blobs, tmp_path / "a", n=1, idempotency_key="nightly"
    )
    assert again != first


def test_workers_never_wait_on_a_deletion(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A claim of another job's items goes on while a deletion's batch is inside its
    transaction: on PostgreSQL without waiting at all (the deletion locks only the deleted
    job's rows); on SQLite, whose one writer serialises them, for no longer than the batch."""
    doomed = _ended(session_factory, blobs, tmp_path, "a", 4)
    open_job, _ = submit_captions(session_factory, blobs, tmp_path / "b", n=2)
    mark_deleting(session_factory, [doomed])
    race = Interleaving("delete:batch", window=3.0)
    _, claimed = race.run(
        lambda: _delete_all(session_factory, doomed),
        lambda: claim_next(session_factory, worker="w", lease_seconds=60),
    )
    assert [c.job_id for c in claimed] == [open_job, open_job]
    if session_factory.kw["bind"].dialect.name == "postgresql":
        assert race.second_blocked is False


def test_two_purgers_share_the_work_without_waiting(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """PostgreSQL: a second deleter finds the job held and moves on (None) instead of waiting;
    SQLite serialises them, and the second simply goes on where the first stopped."""
    job_id = _ended(session_factory, blobs, tmp_path, "a", 4)
    mark_deleting(session_factory, [job_id])

    def second() -> object:
        return delete_step(session_factory, job_id, batch=2, queue_inputs=lambda _s, _r: None)

    race = Interleaving("delete:batch", window=3.0)
    _, other = race.run(lambda: _delete_all(session_factory, job_id), second)
    if session_factory.kw["bind"].dialect.name == "postgresql":
        assert other is None and race.second_blocked is False
    assert _rows(session_factory, job_id) == (0, 0, 0)


def test_a_schedule_gives_its_retention_to_every_job_it_fires(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 2)
    request = SubmitRequest.of(
        "caption", [], "m", max_new_tokens=8, batch_size=8, retain_seconds=7 * 86400
    )
    start = utcnow()
    schedule = add_schedule(
        session_factory,
        name="nightly",
        source=str(tmp_path / "in"),
        request=request,
        every="15m",
        cron=None,
        max_prompt_chars=4000,
        now=start,
    )
    assert schedule.retain_seconds == 7 * 86400
    fired = fire_due_schedules(
        session_factory, blobs, ListPublisher(), now=start + timedelta(minutes=15)
    )
    with session_factory() as session:
        job = session.get(Job, fired[0])
        assert job is not None and job.retain_seconds == 7 * 86400


def _stored(blobs: Blobs) -> set[str]:
    return {o.key for o in blobs.store.list_objects("inputs/")}


def test_purge_deletes_what_is_due_with_the_inputs_no_other_job_uses(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """What retention deletes: the due job's rows and its own stored inputs; an input another
    job references (the same content, stored once) stays, and so does the job kept forever."""
    due = _ended(session_factory, blobs, tmp_path, "a", 3, retain_seconds=60)
    kept = _ended(session_factory, blobs, tmp_path, "b", 1)  # b's one image is a's first
    assert len(_stored(blobs)) == 3
    with session_factory() as session:
        finished = session.get(Job, due).finished_at  # type: ignore[union-attr]
    report = purge(session_factory, blobs, batch=2, now=finished + timedelta(minutes=2))
    assert (report.jobs_marked, report.jobs_deleted, report.items_deleted) == (1, 1, 3)
    assert (report.inputs_deleted, report.finished) == (2, True)
    assert _rows(session_factory, due) == (0, 0, 0)
    with session_factory() as session:
        (uri,) = session.scalars(select(Item.input_uri).where(Item.job_id == kept))
    assert blobs.read_uri(uri) and len(_stored(blobs)) == 1


def test_the_sweepers_share_of_a_purge_stops_in_time_and_the_next_pass_goes_on(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _ended(session_factory, blobs, tmp_path, "a", 4)
    mark_deleting(session_factory, [job_id])
    first = purge(session_factory, blobs, batch=1, seconds=0)
    assert not first.finished and first.jobs_deleted == 0
    assert jobs_being_deleted(session_factory) == [job_id]
    rest = purge(session_factory, blobs, batch=1)
    assert rest.finished and rest.jobs_deleted == 1 and _stored(blobs) == set()


def test_every_maintenance_pass_deletes_what_retention_says_is_due(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    due = _ended(session_factory, blobs, tmp_path, "a", 2, retain_seconds=60)
    with session_factory.begin() as session:
        session.execute(
            update(Job).where(Job.id == due).values(retained_until=utcnow() - timedelta(seconds=1))
        )
    report = run_maintenance(session_factory, blobs, ListPublisher(), make_settings())
    assert (report.purged.jobs_deleted, report.purged.items_deleted) == (1, 2)
    assert _rows(session_factory, due) == (0, 0, 0) and _stored(blobs) == set()
