"""Overlap across messages, on both databases, with the real tiny model: while the model
generates batch N, the worker already holds batch N+1 claimed, fetched, decoded and
preprocessed, and batch N-1 is recorded without the model waiting for it.

The runner's two slots share one engine (``workers.local``, as a Celery worker's threads pool
does). Hooks pause one side at real points: the model's forward (the device work inside
``TransformersEngine.generate``) and the recording of results; the other side proceeds in
that window, and the test checks what it holds. Invariants checked afterwards: every item has
exactly one result, recorded under its own lease (fencing unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

import workers.pipeline
from jobs.db import Item, Job, SessionFactory
from jobs.lifecycle import ItemOutcome, record_results
from jobs.states import ItemStatus, JobStatus
from jobs.submit.request import SubmitRequest
from model.engine import EngineSpec
from model.transformers_engine import TransformersEngine, load_engine
from storage import Blobs
from tests.helpers import GATE_WAIT as WAIT
from tests.helpers import Gate, make_resources, queued_ids, write_images
from workers.local import run_job_locally, submit_locally, work_locally
from workers.resources import WorkerResources


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    spec = EngineSpec(model="tiny-llava", cache_dir=tmp_path_factory.mktemp("m"), device="cpu")
    return load_engine(spec)


@pytest.fixture
def forward(engine: TransformersEngine) -> Iterator[Gate]:
    """Pauses the model's first forward (``generate`` of the underlying model)."""
    gate = Gate(pause_call=1)
    model = engine._model
    original = model.generate
    model.generate = gate.wrap(original)
    try:
        yield gate
    finally:
        gate.opened.set()
        del model.generate  # the instance attribute goes; the class's method is back


def _job(
    sf: SessionFactory,
    blobs: Blobs,
    engine: TransformersEngine,
    tmp_path: Path,
    *,
    images: int,
    slots: int,
) -> tuple[WorkerResources, SubmitRequest]:
    """Resources with ``slots`` sharing the engine, and a caption job in messages of eight."""
    write_images(tmp_path / "in", images)
    res = make_resources(sf, blobs, engine, gpu_batch_size=8, worker_slots=slots)
    request = SubmitRequest.of(
        kind="caption",
        sources=[str(tmp_path / "in")],
        model="tiny-llava",
        max_new_tokens=4,
        batch_size=8,
    )
    return res, request


def _running_leases(sf: SessionFactory, job_id: str) -> dict[str | None, int]:
    with sf() as session:
        rows = session.execute(
            select(Item.lease_token).where(Item.job_id == job_id, Item.status == ItemStatus.running)
        ).all()
    counts: dict[str | None, int] = {}
    for (token,) in rows:
        counts[token] = counts.get(token, 0) + 1
    return counts


def _wait_until(check: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(WAIT * 20):
        if check():
            return
        done.wait(0.05)
    raise AssertionError(f"timed out waiting until {what}")


def test_the_next_batch_is_ready_and_the_last_recorded_while_the_model_generates(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    engine: TransformersEngine,
    forward: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three messages of eight: one model batch each.
    res, request = _job(session_factory, blobs, engine, tmp_path, images=24, slots=2)

    # The first recording pauses too, so "N-1 is being recorded" is a window the test holds.
    recording = Gate(pause_call=1)
    real_record = record_results  # what the pipeline calls, wrapped below

    recorded: list[str] = []

    def record(sf: SessionFactory, outcomes: Sequence[ItemOutcome]) -> int:
        written = int(recording.wrap(real_record)(sf, outcomes))
        recorded.extend(o.item_id for o in outcomes)
        assert written == len(outcomes)  # every outcome written under its own lease
        return written

    monkeypatch.setattr(workers.pipeline, "record_results", record)

    finished: list[Any] = []
    runner = threading.Thread(
        target=lambda: finished.append(run_job_locally(request, res, max_prompt_chars=4000)),
        daemon=True,
    )
    runner.start()

    # Batch N generates (its forward is paused) ...
    assert forward.reached.wait(WAIT), "the model never started"
    with session_factory() as session:
        job_id = session.scalars(select(Job.id)).one()
    # ... and batch N+1 is already claimed under its own lease, fetched, decoded and
    # preprocessed: prepared on the host, waiting only for the device.
    _wait_until(lambda: engine.prepared_waiting == 1, "the next batch waits for the device")
    leases = _running_leases(session_factory, job_id)
    assert sorted(leases.values()) == [8, 8], leases  # two messages held, eight items each
    assert forward.calls == 1  # the model still runs only batch N

    # Batch N ends; its recording pauses. The model does not wait for it: batch N+1 generates
    # while N's results are still being recorded.
    forward.opened.set()
    assert recording.reached.wait(WAIT), "batch N was never recorded"
    _wait_until(lambda: forward.calls >= 2, "the next batch generates during the recording")
    assert not recording.opened.is_set()

    recording.opened.set()
    runner.join(WAIT * 2)
    assert not runner.is_alive() and finished, "the job did not finish"

    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.completed
        items = session.scalars(select(Item).where(Item.job_id == job_id)).all()
    assert len(items) == 24
    assert all(i.status == ItemStatus.succeeded and i.result_text is not None for i in items)
    # One claim and one recorded result per item: the overlap neither lost nor doubled any.
    assert all(i.attempts == 1 for i in items)
    assert sorted(recorded) == sorted(i.id for i in items)


def test_one_slot_works_one_message_at_a_time(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    engine: TransformersEngine,
    forward: Gate,
) -> None:
    """The control: with one slot nothing of the next message is claimed while the model
    runs, which is what the overlap above changes."""
    res, request = _job(session_factory, blobs, engine, tmp_path, images=16, slots=1)
    runner = threading.Thread(
        target=lambda: run_job_locally(request, res, max_prompt_chars=4000), daemon=True
    )
    runner.start()
    assert forward.reached.wait(WAIT)
    with session_factory() as session:
        job_id = session.scalars(select(Job.id)).one()
    assert sorted(_running_leases(session_factory, job_id).values()) == [8]
    assert engine.prepared_waiting == 0
    forward.opened.set()
    runner.join(WAIT * 2)
    assert not runner.is_alive()


def test_a_message_whose_item_lost_a_worker_runs_alone(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    engine: TransformersEngine,
    forward: Gate,
) -> None:
    """Invariant: an item that killed its worker does not take other items' attempts with it
    again. The sweeper sends such an item out alone, by name, and no doorbell ever takes it;
    beside it in the same process, another slot's batch would die with it. So its message runs
    with no other message claimed: a doorbell taken meanwhile waits, holding nothing."""
    res, request = _job(session_factory, blobs, engine, tmp_path, images=16, slots=2)
    queue, submitted = submit_locally(request, res, max_prompt_chars=4000)
    ids = queued_ids(session_factory, submitted.job_id)
    suspects = ids[4:8]
    with session_factory.begin() as session:  # as if their worker had been lost once
        session.execute(update(Item).where(Item.id.in_(suspects)).values(attempts=1))
    assert list(queue.batches) == [[], []]  # the submit rang a doorbell per eight items
    queue.batches.appendleft([suspects[0]])  # the sweeper's message for one, first in line

    # The two slots start together; the suspect's is let in first, so the doorbell comes while
    # it runs. What the doorbell then does at the gate is ``workers.isolation``'s own.
    suspect_in, doorbell_in = threading.Event(), threading.Event()
    real_turn = res.isolation.turn

    @contextmanager
    def turn(*, alone: bool) -> Iterator[None]:
        if not alone:
            assert suspect_in.wait(WAIT), "the suspect's message never took its turn"
        with real_turn(alone=alone):
            (suspect_in if alone else doorbell_in).set()
            yield

    res.isolation.turn = turn  # type: ignore[method-assign]
    runner = threading.Thread(
        target=lambda: work_locally(submitted.job_id, res, queue), daemon=True
    )
    runner.start()

    assert forward.reached.wait(WAIT)
    # The suspect generates alone; the doorbell has not got past the gate, so it holds nothing.
    leases = _running_leases(session_factory, submitted.job_id)
    assert sorted(leases.values()) == [1]
    with session_factory() as session:
        running = session.scalars(
            select(Item.id).where(
                Item.job_id == submitted.job_id, Item.status == ItemStatus.running
            )
        ).all()
    assert running == [suspects[0]]
    assert not doorbell_in.is_set()
    assert engine.prepared_waiting == 0
    forward.opened.set()
    runner.join(WAIT * 2)
    assert not runner.is_alive()
    assert doorbell_in.is_set()
    with session_factory() as session:
        items = session.scalars(select(Item).where(Item.job_id == submitted.job_id)).all()
    assert all(i.status == ItemStatus.succeeded for i in items)
    # Normal items were claimed once by doorbells; each suspect once more, by its own message.
    assert {i.id: i.attempts for i in items} == {i: 2 if i in suspects else 1 for i in ids}
