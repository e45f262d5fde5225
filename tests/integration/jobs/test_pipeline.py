"""The batch path on both databases with the fake engine: claim, fetch, generate, record."""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher
from jobs.hooks import pause_at
from jobs.lifecycle import claim_items
from jobs.states import ItemStatus, JobStatus
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from model.fake import FakeEngine
from storage import Blobs, TransientStorageError
from tests.helpers import Gate, make_resources, statuses, write_images
from workers.local import hand_back, run_job_locally
from workers.pipeline import BatchReport, process_batch


def _request(sources: list[str], **kw: object) -> SubmitRequest:
    base: dict[str, object] = dict(
        kind="caption", sources=sources, model="fake", max_new_tokens=8, batch_size=4
    )
    base.update(kw)
    return SubmitRequest.of(**base)  # type: ignore[arg-type]


def _submit_images(
    session_factory: SessionFactory, blobs: Blobs, directory: Path, count: int
) -> tuple[SubmitResult, list[list[str]]]:
    """Submits ``count`` new images; returns the result and the batches it published."""
    write_images(directory, count)
    batches: list[list[str]] = []
    result = submit_job(
        _request([str(directory)]),
        session_factory=session_factory,
        blobs=blobs,
        publisher=CallbackPublisher(lambda _j, ids: batches.append(ids)),
        max_prompt_chars=1000,
    )
    return result, batches


def test_local_run_captions_every_image_and_completes_the_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "catalogue", 10)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=4)
    result = run_job_locally(_request([str(tmp_path / "catalogue")]), res, max_prompt_chars=1000)
    assert result.item_count == 10
    assert engine.calls == [4, 4, 2]
    with session_factory() as session:
        job = session.get(Job, result.job_id)
        assert job is not None and job.status == JobStatus.completed
        assert job.started_at is not None and job.finished_at is not None
        items = list(session.scalars(select(Item).where(Item.job_id == job.id).order_by(Item.seq)))
    assert [i.source for i in items] == [str(p) for p in paths]
    for item in items:
        assert item.status == ItemStatus.succeeded
        assert item.result_text and "caption" in item.result_text
        assert item.attempts == 1 and item.lease_token is None and item.tokens_out
        assert item.input_uri.startswith("file://") and item.input_sha256


def test_corrupt_image_fails_only_its_own_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "cat", 3)
    (tmp_path / "cat" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    res = make_resources(session_factory, blobs, FakeEngine())
    result = run_job_locally(_request([str(tmp_path / "cat")]), res, max_prompt_chars=1000)
    assert statuses(session_factory, result.job_id) == ["succeeded", "failed", "succeeded"]
    with session_factory() as session:
        bad = session.scalars(select(Item).where(Item.status == ItemStatus.failed)).one()
        job = session.get(Job, result.job_id)
    assert bad.error_code == "image_decode_error" and bad.error_message
    assert job is not None and job.status == JobStatus.completed


def test_duplicate_message_claims_nothing_and_writes_once(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    result, batches = _submit_images(session_factory, blobs, tmp_path / "cat", 3)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine)
    first = process_batch(batches[0], res)
    second = process_batch(batches[0], res)
    assert (first.claimed, first.recorded) == (3, 3)
    assert (second.claimed, second.recorded) == (0, 0)
    assert engine.calls == [3]
    assert statuses(session_factory, result.job_id) == ["succeeded"] * 3


def test_out_of_memory_splits_the_batch_and_every_item_succeeds(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "cat", 8)
    engine = FakeEngine(oom_when_batch_over=2)
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    result = run_job_locally(
        _request([str(tmp_path / "cat")], batch_size=8), res, max_prompt_chars=1000
    )
    assert statuses(session_factory, result.job_id) == ["succeeded"] * 8
    assert engine.calls[0] == 8 and max(engine.calls[1:]) <= 4 and engine.calls.count(2) == 4


class FlakyBlobs(Blobs):
    """The real local store, with reads that time out a set number of times first."""

    def __init__(self, inner: Blobs, failures: int) -> None:
        super().__init__(inner.store)
        self.failures = failures

    def read_uri(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        if self.failures > 0:
            self.failures -= 1
            raise TransientStorageError("S3 timed out (simulated)")
        return super().read_uri(uri, max_bytes=max_bytes)


def test_transient_storage_error_hands_the_item_back_then_gives_up_at_the_limit(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    result, batches = _submit_images(session_factory, blobs, tmp_path / "cat", 1)
    flaky = FlakyBlobs(blobs, failures=1)
    # A backoff of a minute: "not due yet" holds however slowly a loaded machine gets to the
    # next claim (0.2 s did not, in one full run); the minute is then made to pass.
    res = make_resources(session_factory, flaky, FakeEngine(), storage_retry_base_seconds=60)
    handed_back_at = utcnow()
    assert process_batch(batches[0], res).released == 1
    assert statuses(session_factory, result.job_id) == ["queued"]
    assert process_batch(batches[0], res).claimed == 0  # backing off: not due yet
    with session_factory.begin() as session:
        item = session.scalars(select(Item).where(Item.job_id == result.job_id)).one()
        assert item.not_before is not None
        assert item.not_before >= handed_back_at + timedelta(seconds=60)
        item.not_before = utcnow() - timedelta(seconds=1)
    assert process_batch(batches[0], res).succeeded == 1  # due again, and reads fine
    with session_factory() as session:
        item = session.scalars(select(Item).where(Item.job_id == result.job_id)).one()
    assert (item.attempts, item.transient_failures) == (1, 1)  # the blip cost no attempt

    again, batches = _submit_images(session_factory, blobs, tmp_path / "cat2", 1)
    always = FlakyBlobs(blobs, failures=99)
    res = make_resources(session_factory, always, FakeEngine(), storage_retry_limit=2)
    for _ in range(3):
        process_batch(batches[0], res)
        time.sleep(0.1)
    with session_factory() as session:
        item = session.scalars(select(Item).where(Item.job_id == again.job_id)).one()
    assert (item.status, item.error_code, item.attempts) == ("failed", "storage_unavailable", 1)
    assert item.transient_failures == 2


def test_local_run_retries_an_item_handed_back_by_a_transient_storage_error(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "cat", 2)
    res = make_resources(session_factory, FlakyBlobs(blobs, failures=1), FakeEngine())
    result = run_job_locally(_request([str(tmp_path / "cat")]), res, max_prompt_chars=1000)
    assert statuses(session_factory, result.job_id) == ["succeeded", "succeeded"]
    with session_factory() as session:
        job = session.get(Job, result.job_id)
        attempts = sorted(session.scalars(select(Item.attempts).where(Item.job_id == job.id)))  # type: ignore[union-attr]
    assert job is not None and job.status == JobStatus.completed
    assert attempts == [1, 1]  # the hand-back refunds its attempt


def test_the_gpu_batch_is_the_workers_and_an_oom_limit_is_remembered(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Issue 11: a job's --batch-size sizes its messages, never the model batch; the worker's
    micro-batch halves on out-of-memory once and stays there for later batches."""
    write_images(tmp_path / "cat", 12)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=3)
    run_job_locally(_request([str(tmp_path / "cat")], batch_size=12), res, max_prompt_chars=1000)
    assert engine.calls == [3, 3, 3, 3]  # one message of 12, model batches of 3

    write_images(tmp_path / "more", 16, prefix="m")
    tight = FakeEngine(oom_when_batch_over=4)
    res = make_resources(session_factory, blobs, tight, gpu_batch_size=8)
    result = run_job_locally(
        _request([str(tmp_path / "more")], batch_size=16), res, max_prompt_chars=1000
    )
    assert statuses(session_factory, result.job_id) == ["succeeded"] * 16
    assert tight.calls == [8, 4, 4, 4, 4]  # one OOM at 8, then 4 from the start
    assert res.micro_batch.size_for(tight) == 4


def test_a_stopped_run_hands_back_the_claim_a_slot_had_under_way(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A stopped run leaves nothing ``running`` (``workers.local``): a slot paused inside its
    claim when the runner hands back commits that claim first, and its items are handed back
    with the rest; a slot that comes to claim afterwards takes nothing."""
    result, _ = _submit_images(session_factory, blobs, tmp_path / "imgs", 4)
    inside_claim = Gate()
    generating = Gate()  # the slot goes on with its batch; the real process has ended
    engine = FakeEngine()
    engine.generate = generating.wrap(engine.generate)  # type: ignore[method-assign]
    res = make_resources(session_factory, blobs, engine)
    slot = threading.Thread(
        target=process_batch, args=([], res), kwargs={"job_id": result.job_id}, daemon=True
    )
    stopping = threading.Thread(target=hand_back, args=(res, result.job_id), daemon=True)
    try:
        with pause_at("claim_next:begin", inside_claim.wrap(lambda: None)):
            slot.start()
            assert inside_claim.reached.wait(30)
            stopping.start()
            stopping.join(1.0)
            waited_for_the_claim = stopping.is_alive()
            inside_claim.opened.set()
            stopping.join(30)
            assert generating.reached.wait(30)
        left = statuses(session_factory, result.job_id)
    finally:
        inside_claim.opened.set()
        generating.opened.set()
    slot.join(30)
    assert left == ["queued"] * 4, left
    assert waited_for_the_claim
    assert statuses(session_factory, result.job_id) == ["queued"] * 4  # its record came too late
    assert process_batch([], res, job_id=result.job_id) == BatchReport()


def test_a_ctrl_c_during_the_wait_for_a_claim_still_hands_back(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A stopped run leaves nothing ``running``, even when yet another Ctrl-C lands while the
    runner waits out a slot's claim: it hands back at once instead of leaving with nothing
    handed back."""
    result, _ = _submit_images(session_factory, blobs, tmp_path / "imgs", 4)
    res = make_resources(session_factory, blobs, FakeEngine())
    with session_factory() as session:
        ids = list(session.scalars(select(Item.id).where(Item.job_id == result.job_id)))
    claim_items(session_factory, ids, worker=res.worker_name, lease_seconds=600)
    assert statuses(session_factory, result.job_id) == ["running"] * 4
    under_way, release = threading.Event(), threading.Event()

    def claiming() -> None:  # a slot inside its claim, for longer than the runner waits
        with res.claims.claim():
            under_way.set()
            release.wait(30)

    def interrupt(main: int) -> None:
        while res.claims.is_open:  # until the runner is waiting out the claim
            time.sleep(0.01)
        time.sleep(0.1)
        signal.pthread_kill(main, signal.SIGINT)

    slot = threading.Thread(target=claiming, daemon=True)
    slot.start()
    assert under_way.wait(30)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    try:  # a KeyboardInterrupt that escapes is this test's failure, not the end of the session
        threading.Thread(target=interrupt, args=(threading.get_ident(),), daemon=True).start()
        hand_back(res, result.job_id)
    except KeyboardInterrupt:
        interrupted = True
    else:
        interrupted = False
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
    took = time.monotonic() - started
    assert statuses(session_factory, result.job_id) == ["queued"] * 4
    assert not interrupted  # the Ctrl-C ended the wait, not the hand-back
    assert took < 3, took  # not the whole wait (5 s)
