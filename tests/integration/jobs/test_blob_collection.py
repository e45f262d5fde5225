"""Collecting stored inputs against the submits beside it, on SQLite and PostgreSQL and on both
stores (a local directory, S3 through moto's server).

Each race is forced, not hoped for: a hook pauses one side at a real point (after a submit
stored its inputs; after a pass deleted its objects, its lock held) and the other runs in that
window. Each test names what it checks: invariant I15 is docs/design.md#I15.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from jobs.db import BlobCandidate, Item, Job, SessionFactory, SubmitInFlight, utcnow
from jobs.errors import RequestError
from jobs.hooks import pause_at
from jobs.retention.blobs import Collected, collect_blobs, queue_inputs_of
from jobs.retention.purge import delete_jobs
from jobs.states import JobStatus
from jobs.submit import rows as submit_rows
from jobs.submit.in_flight import IN_FLIGHT_LEASE, SUBMIT_STALLED
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from model.fake import FakeEngine
from storage import Blobs, ObjectNotFoundError, S3Store, StoredBlob, open_blobs
from tests.helpers import ListPublisher, image_bytes, make_resources
from tests.interleaving import Interleaving
from workers.local import run_job_locally

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "local":
        return open_blobs(str(tmp_path / "blobs"))
    client: S3Client = request.getfixturevalue("s3_client")
    bucket: str = request.getfixturevalue("s3_bucket")
    return Blobs(S3Store(client, bucket, "llava-inputs"), s3_client_factory=lambda: client)


def _image(seed: int) -> bytes:
    return image_bytes((24, 24), seed=seed)


def _submit(
    sf: SessionFactory, blobs: Blobs, folder: Path, *images: bytes, batch_size: int = 100
) -> SubmitResult:
    """A caption job of ``images``, each a .png file of ``folder``."""
    folder.mkdir(parents=True)
    for n, data in enumerate(images):
        (folder / f"img{n}.png").write_bytes(data)
    request = SubmitRequest.of(
        kind="caption", sources=[str(folder)], model="m", max_new_tokens=8, batch_size=batch_size
    )
    return submit_job(
        request,
        session_factory=sf,
        blobs=blobs,
        publisher=ListPublisher(),
        max_prompt_chars=1000,
    )


def _candidate(
    sf: SessionFactory, blobs: Blobs, data: bytes, *, now: datetime | None = None
) -> StoredBlob:
    """``data`` stored as a submit stores it, then queued as the deleter of its last item
    queues it."""
    blob = blobs.put_content_addressed(data, suffix=".png")
    with sf.begin() as session:
        _queue(session, [(blob.uri, blob.sha256)], now=now)
    return blob


def _queue(session: Session, rows: list[tuple[str, str]], *, now: datetime | None = None) -> None:
    """Candidates written as they are queued, for inputs no item of these tests names."""
    values = [{"uri": uri, "sha256": sha, "queued_at": now or utcnow()} for uri, sha in rows]
    session.execute(insert(BlobCandidate), values)


def _queued(sf: SessionFactory) -> set[str]:
    with sf() as session:
        return set(session.scalars(select(BlobCandidate.uri)))


def _input_uris(sf: SessionFactory, job_id: str) -> list[str]:
    with sf() as session:
        return list(session.scalars(select(Item.input_uri).where(Item.job_id == job_id)))


def _input_uris_any(sf: SessionFactory) -> list[str]:
    with sf() as session:
        return list(session.scalars(select(Item.input_uri)))


def _holds(blobs: Blobs, uri: str) -> bool:
    try:
        blobs.read_uri(uri)
    except ObjectNotFoundError:
        return False
    return True


# --- a submit in flight ------------------------------------------------------------------------


def test_a_pass_defers_while_a_submit_that_found_the_input_stored_is_in_flight(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15: an input a submit in flight found already stored (its upload skipped) is
    not deleted before the submit's rows reference it. The pass runs after the submit stored
    its inputs and before its rows' transaction: it sees the registration and defers; the
    submit commits, and its item reads the bytes."""
    data = _image(1)
    blob = _candidate(session_factory, blobs, data)
    race = Interleaving("submit:inputs_stored")
    result, collected = race.run(
        lambda: _submit(session_factory, blobs, tmp_path / "in", data),
        lambda: collect_blobs(session_factory, blobs),
    )
    assert collected == Collected(deferred=True) and race.second_blocked is False
    assert _input_uris(session_factory, result.job_id) == [blob.uri]
    assert blobs.read_uri(blob.uri) == data
    # The submit has ended: the next pass finds the candidate referenced and drops it.
    assert collect_blobs(session_factory, blobs) == Collected(still_referenced=1)
    assert _queued(session_factory) == set() and blobs.read_uri(blob.uri) == data


def test_a_submit_starting_during_a_pass_waits_for_it_and_stores_the_input_again(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15 from the other side: a submit that starts while a pass holds its lock
    (its objects deleted, not yet committed) cannot register until the pass commits, so it can
    never find an object the pass is deleting; it then stores the bytes again, and its item
    references an object that exists."""
    data = _image(2)
    blob = _candidate(session_factory, blobs, data)
    race = Interleaving("collect:deleted")
    collected, result = race.run(
        lambda: collect_blobs(session_factory, blobs),
        lambda: _submit(session_factory, blobs, tmp_path / "in", data),
    )
    assert race.second_blocked  # registering waited for the pass's lock
    assert collected == Collected(deleted=1)
    assert _input_uris(session_factory, result.job_id) == [blob.uri]
    assert blobs.read_uri(blob.uri) == data


def test_a_stalled_submit_cannot_commit_rows_and_collection_went_ahead(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15 for a submit stalled past its registration's lease: the pass removes the
    expired registration and deletes the candidate it found stored; the submit, resuming,
    fails with ``submit_stalled`` and writes nothing, so no row ever references the deleted
    object. Submitted again, it stores the bytes again."""
    data = _image(3)
    blob = _candidate(session_factory, blobs, data)
    later = utcnow() + IN_FLIGHT_LEASE + IN_FLIGHT_LEASE / 10
    passes: list[Collected] = []
    race = Interleaving("submit:inputs_stored")
    with pytest.raises(RequestError) as refused:
        race.run(
            lambda: _submit(session_factory, blobs, tmp_path / "in", data),
            lambda: passes.append(collect_blobs(session_factory, blobs, now=later)),
        )
    assert refused.value.code == SUBMIT_STALLED
    assert passes == [Collected(deleted=1, expired_submits=1)]
    assert not _holds(blobs, blob.uri)
    with session_factory() as session:
        assert session.scalars(select(Job.id)).all() == []
        assert session.scalars(select(SubmitInFlight.id)).all() == []
    again = _submit(session_factory, blobs, tmp_path / "again", data)
    assert _input_uris(session_factory, again.job_id) == [blob.uri]
    assert blobs.read_uri(blob.uri) == data


def test_a_big_submit_stalled_between_chunks_stops_and_cancels_its_written_part(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariant I15 chunk by chunk: a big submit stalled past its registration after its first
    chunk committed, and a pass collected an input its next chunk found already stored; that
    chunk's confirmation fails (``submit_stalled``), no row references the deleted object, and
    the part written so far is cancelled (invariant I9: never passed off as the whole)."""
    monkeypatch.setattr(submit_rows, "SUBMIT_CHUNK_ROWS", 2)  # chunks of 1, 2 and 1 rows
    images = [_image(30 + n) for n in range(4)]
    blob = _candidate(session_factory, blobs, images[1])  # the second chunk's first input
    later = utcnow() + IN_FLIGHT_LEASE + IN_FLIGHT_LEASE / 10
    passes: list[Collected] = []

    def second_chunk_stored() -> None:
        if len(passes) == 0 and _input_uris_any(session_factory):  # the first chunk committed
            # Between transactions: the submit holds nothing, the pass runs right here.
            passes.append(collect_blobs(session_factory, blobs, now=later))

    stored = pause_at("submit:inputs_stored", second_chunk_stored)
    with stored, pytest.raises(RequestError) as refused:
        _submit(session_factory, blobs, tmp_path / "in", *images, batch_size=1)
    assert refused.value.code == SUBMIT_STALLED
    assert passes == [Collected(deleted=1, expired_submits=1)]
    assert not _holds(blobs, blob.uri)
    with session_factory() as session:
        assert session.scalars(select(Item.input_uri)).all() != []
        assert blob.uri not in session.scalars(select(Item.input_uri)).all()
        assert session.scalar(select(Job.status)) in (JobStatus.cancelling, JobStatus.cancelled)


# --- the pass itself ---------------------------------------------------------------------------


def test_a_pass_that_crashes_after_deleting_leaves_its_candidates_for_the_next(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15 through a crash: a pass that dies after deleting its objects, before its
    commit, leaves their candidates queued (and any referenced one's object in place); the
    next pass deletes again (the objects already gone are no error) and empties the queue."""
    start = utcnow()
    gone = [_candidate(session_factory, blobs, _image(10 + n), now=start) for n in range(3)]
    used = _image(20)
    result = _submit(session_factory, blobs, tmp_path / "in", used)
    kept = _candidate(session_factory, blobs, used)  # queued last: in the second batch

    def crash() -> None:
        raise RuntimeError("the collector died")

    with pause_at("collect:deleted", crash), pytest.raises(RuntimeError):
        collect_blobs(session_factory, blobs, limit=2)
    assert _queued(session_factory) == {b.uri for b in [*gone, kept]}
    assert [_holds(blobs, b.uri) for b in gone] == [False, False, True]  # the first batch's
    done = collect_blobs(session_factory, blobs, limit=2)
    assert done == Collected(deleted=3, still_referenced=1)
    assert _queued(session_factory) == set()
    assert not any(_holds(blobs, b.uri) for b in gone)
    assert _input_uris(session_factory, result.job_id) == [kept.uri]
    assert blobs.read_uri(kept.uri) == used


def test_a_candidate_another_job_references_is_dropped_not_deleted(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15: an input is deleted only when no item of any job references it. One job's
    items were deleted (the input queued), another job's item still references the same bytes:
    the candidate leaves the queue and the object stays."""
    data = _image(4)
    other = _submit(session_factory, blobs, tmp_path / "other", data)
    (uri,) = _input_uris(session_factory, other.job_id)
    blob = _candidate(session_factory, blobs, data)
    assert blob.uri == uri
    assert collect_blobs(session_factory, blobs) == Collected(still_referenced=1)
    assert _queued(session_factory) == set()
    assert blobs.read_uri(uri) == data


def test_an_item_naming_a_stored_input_in_place_references_it(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15 for an input named in place: a submit that names one of our stored inputs
    by its URI (an s3:// object read where it lies; a local file, stored again) records its
    sha256, so the item counts as a reference and the candidate is kept."""
    data = _image(6)
    blob = _candidate(session_factory, blobs, data)
    if isinstance(blobs.store, S3Store):
        source = blob.uri
    else:
        source = str(Path(blob.uri.removeprefix("file://")))
    request = SubmitRequest.of(kind="caption", sources=[source], model="m", max_new_tokens=8)
    result = submit_job(
        request,
        session_factory=session_factory,
        blobs=blobs,
        publisher=ListPublisher(),
        max_prompt_chars=1000,
    )
    assert _input_uris(session_factory, result.job_id) == [blob.uri]
    assert collect_blobs(session_factory, blobs) == Collected(still_referenced=1)
    assert blobs.read_uri(blob.uri) == data


def test_objects_outside_the_input_store_are_never_deleted(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15's other half: collection deletes only inputs our store holds under its
    content-addressed area. A candidate naming a user's object (another bucket, a file outside
    the store), another key of our store, or a look-alike beside our prefix is dropped from the
    queue and left in place."""
    store = blobs.store
    digest = "ab" * 32
    beside: list[str] = [store.write_bytes("results/r.png", b"ours, not an input")]
    if isinstance(store, S3Store):
        client, bucket = store.client, store.bucket
        for key in ("user/photo.png", f"llava-inputs-old/inputs/sha256/ab/{digest}.png"):
            client.put_object(Bucket=bucket, Key=key, Body=b"theirs")
            beside.append(f"s3://{bucket}/{key}")
    else:
        outside = tmp_path / "user" / "inputs" / "sha256" / "ab" / f"{digest}.png"
        outside.parent.mkdir(parents=True)
        outside.write_bytes(b"theirs")
        beside.append(outside.as_uri())
    with session_factory.begin() as session:
        _queue(session, [(uri, digest) for uri in beside])
    assert collect_blobs(session_factory, blobs) == Collected(foreign=len(beside))
    assert _queued(session_factory) == set()
    for uri in beside:
        if isinstance(store, S3Store):
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            store.client.head_object(Bucket=bucket, Key=key)  # raises if it was deleted
        else:
            assert Path(uri.removeprefix("file://")).exists()


# --- queueing ----------------------------------------------------------------------------------


def test_deleting_queues_each_stored_input_once_per_step(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Only inputs we stored (a sha256) are queued, each once per call however many items name
    it; queueing one again is a new row, so a pass that read the older row and drops it leaves
    this one queued."""
    result = _submit(session_factory, blobs, tmp_path / "in", _image(1), _image(1), _image(2))
    of_job = [Item.job_id == result.job_id]
    with session_factory.begin() as session:  # the third: a user's object, never ours
        session.execute(update(Item).where(*of_job, Item.seq == 2).values(input_sha256=None))
    with session_factory() as session:  # the first two: the same bytes, one stored input
        stored, again = session.scalars(
            select(Item.input_uri).where(*of_job, Item.seq < 2).order_by(Item.seq)
        )
    assert stored == again
    first, later = utcnow(), utcnow() + IN_FLIGHT_LEASE
    with session_factory.begin() as session:
        assert queue_inputs_of(session, of_job, now=first) == 1
        assert queue_inputs_of(session, [Item.job_id == "no such job"], now=first) == 0
    with session_factory.begin() as session:
        assert queue_inputs_of(session, of_job, now=later) == 1
    with session_factory() as session:
        queued = sorted(
            (uri, when)
            for uri, when in session.execute(select(BlobCandidate.uri, BlobCandidate.queued_at))
        )
    assert queued == [(stored, first), (stored, later)]


def test_a_candidate_queued_again_during_a_pass_stays_queued(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """No input is left behind: a pass finds a candidate still referenced by items that a
    deleter, meanwhile, deletes and queues the input again for; the candidate is not dropped
    (the deleter's is a new row; on SQLite the deleter waits for the pass), and the next pass
    deletes the object."""
    data = _image(5)
    result = _submit(session_factory, blobs, tmp_path / "in", data)
    blob = _candidate(session_factory, blobs, data)

    def delete_the_job_items() -> None:
        with session_factory.begin() as session:  # as a deletion step does
            queue_inputs_of(session, [Item.job_id == result.job_id])
            session.execute(delete(Item).where(Item.job_id == result.job_id))

    race = Interleaving("collect:deleted")
    collected, _ = race.run(lambda: collect_blobs(session_factory, blobs), delete_the_job_items)
    assert collected == Collected(still_referenced=1)
    assert _queued(session_factory) == {blob.uri}
    assert collect_blobs(session_factory, blobs) == Collected(deleted=1)
    assert not _holds(blobs, blob.uri)


def test_an_input_stored_only_as_a_second_image_is_kept_until_its_job_is_deleted(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I15 for a request of several images: its other images (``item_inputs``) are
    references as its first is, and deleting its job makes them candidates too."""
    first, second = _image(21), _image(22)
    tmp_path.joinpath("a.png").write_bytes(first)
    inline = "data:image/png;base64," + base64.b64encode(second).decode()
    content = [
        {"type": "text", "text": "Compare."},
        {"type": "image_url", "image_url": {"url": "a.png"}},
        {"type": "image_url", "image_url": {"url": inline}},
    ]
    line = {
        "custom_id": "pair",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": content}]},
    }
    (tmp_path / "batch.jsonl").write_text(json.dumps(line) + "\n")
    request = SubmitRequest.of(
        "chat", [str(tmp_path / "batch.jsonl")], "m", max_new_tokens=4, input_format="auto"
    )
    res = make_resources(session_factory, blobs, FakeEngine())
    job_id = run_job_locally(request, res, max_prompt_chars=1000).job_id
    assert _input_uris(session_factory, job_id) != []
    # Queued as another job's deletion queues it: this job's second image still needs it.
    blob = _candidate(session_factory, blobs, second)
    assert collect_blobs(session_factory, blobs) == Collected(still_referenced=1)
    assert blobs.read_uri(blob.uri) == second

    report = delete_jobs(session_factory, blobs, [job_id], batch=10)
    assert report.inputs_deleted == 2  # the first image and the second
    with pytest.raises(ObjectNotFoundError):
        blobs.read_uri(blob.uri)
    assert _queued(session_factory) == set()
