"""The embedded one-process mode: same pipeline, no broker, an in-process worker.

Used by ``llava-batch run``: submit with a publisher that queues batches in memory, then work
through them here. The sweeper's finaliser runs at the end, as it would in a deployment.

Submitting and working are two steps, so the CLI submits (which validates every input and
writes the rows) before it loads the model, and so ``run --resume JOB`` works through what an
interrupted run left queued. Between batches the loop asks ``should_stop``; a run that stops
(or is stopped by an exception: a second Ctrl-C, a dead engine) leaves no item ``running``:
whatever it still holds is handed back, queued for the next run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from queue import Empty, SimpleQueue

from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher, Publisher
from jobs.lifecycle import hand_back_claims
from jobs.states import TERMINAL_JOB_STATES, ItemStatus
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest, SubmitResult
from jobs.sweeper import sweep
from workers.pipeline import BatchReport, process_batch
from workers.resources import WorkerResources

log = logging.getLogger(__name__)

# Called after each batch with the ids it was given and what came of them.
OnBatch = Callable[[Sequence[str], BatchReport], None]


class InProcessQueue:
    """Messages in memory, for one job: doorbells (no ids; each claims that job's next batch)
    and messages that name an item that lost a worker. A message of another job is never
    taken (the runner's sweep is over its own job only), and would be dropped."""

    def __init__(self, job_id: str | None = None, *, bell_limit: int = 4) -> None:
        self.job_id = job_id
        self.batches: deque[list[str]] = deque()
        self.bell_limit = bell_limit
        self.publisher: Publisher = CallbackPublisher(
            self._take, waiting=lambda: len(self.batches), bell_limit=bell_limit
        )

    def _take(self, job_id: str | None, item_ids: list[str]) -> None:
        if self.job_id is None:  # submitting: the first job published is this queue's
            self.job_id = job_id
        if job_id is None or job_id == self.job_id:  # None: the sweep rang, for this job
            self.batches.append(item_ids)

    def ring_again(self) -> None:
        """A doorbell that found work is replaced (``workers.tasks`` does the same)."""
        if len(self.batches) < self.bell_limit:
            self.batches.append([])


def run_job_locally(
    request: SubmitRequest,
    res: WorkerResources,
    *,
    max_prompt_chars: int,
    on_batch: OnBatch | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SubmitResult:
    queue, submitted = submit_locally(request, res, max_prompt_chars=max_prompt_chars)
    work_locally(submitted.job_id, res, queue, on_batch=on_batch, should_stop=should_stop)
    return submitted


def submit_locally(
    request: SubmitRequest, res: WorkerResources, *, max_prompt_chars: int
) -> tuple[InProcessQueue, SubmitResult]:
    """Submits (validating every input; nothing is loaded) onto an in-memory queue."""
    queue = InProcessQueue(bell_limit=_bell_limit(res))
    submitted = submit_job(
        request,
        session_factory=res.session_factory,
        blobs=res.blobs,
        publisher=queue.publisher,
        max_prompt_chars=max_prompt_chars,
        in_flight_lease=res.settings.submit_in_flight,
    )
    queue.job_id = submitted.job_id
    return queue, submitted


def work_locally(
    job_id: str,
    res: WorkerResources,
    queue: InProcessQueue | None = None,
    *,
    on_batch: OnBatch | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Works through the job here until it has finished (True) or ``should_stop`` says so
    between batches (False: the rest stays queued). Without a ``queue`` (resuming), the first
    sweep re-publishes what is queued."""
    queue = queue or InProcessQueue(job_id, bell_limit=_bell_limit(res))
    stop = should_stop or (lambda: False)
    try:
        return _work(job_id, res, queue, on_batch, stop)
    except BaseException:
        # Ctrl-C twice, SIGTERM twice, a dead engine: what this process holds goes back now,
        # not when its lease runs out. Recorded results are already committed.
        hand_back(res, job_id)
        raise


# A claim takes milliseconds; one still under way after this is riding out a database blip.
_CLAIM_WAIT_S = 5.0


def hand_back(res: WorkerResources, job_id: str) -> None:
    """Stops this process's slots from claiming, waits out the claims under way (a slot thread
    may be inside one), then queues again every item the process holds."""
    try:
        closed = res.claims.close(_CLAIM_WAIT_S)
    except KeyboardInterrupt:  # yet another Ctrl-C: hand back what is committed, at once
        closed = False
    if not closed:
        log.warning("a claim of job=%s was still under way when its items were handed back", job_id)
    try:
        hand_back_claims(res.session_factory, job_id, worker=res.worker_name)
    except Exception as exc:  # the lease is the safety net: the sweeper takes them back
        log.warning("could not hand back the items of job=%s: %s", job_id, exc)


def _bell_limit(res: WorkerResources) -> int:
    # Enough doorbells for every slot and one more each, to start as soon as one ends.
    return 2 * max(1, res.settings.worker_slots)


def _work(
    job_id: str,
    res: WorkerResources,
    queue: InProcessQueue,
    on_batch: OnBatch | None,
    stop: Callable[[], bool],
) -> bool:
    # Work through the batches, then let a sweep re-publish what was handed back (after its
    # storage backoff) and finalise the job. The in-memory queue is drained before each sweep,
    # so any queued item with a dispatch stamp has no message: re-publish at once.
    while True:
        if not _drain(queue, res, on_batch, stop):
            return False
        sweep(
            res.session_factory,
            queue.publisher,
            max_attempts=res.settings.max_attempts,
            batch_size=res.settings.message_size,
            redispatch_after=timedelta(0),
            job_id=job_id,  # its publisher delivers this job's messages only: take no other's
        )
        if queue.batches:
            continue
        wait = _seconds_to_wait(res.session_factory, job_id)
        if wait is None:
            return True
        if stop():  # after the sweep: a job whose last batch just ended is finalised, not left
            return False
        _sleep_unless_stopped(wait, stop)


def _drain(
    queue: InProcessQueue,
    res: WorkerResources,
    on_batch: OnBatch | None,
    stop: Callable[[], bool],
) -> bool:
    """Works through the queued batches, ``res.settings.worker_slots`` at a time as a Celery
    worker's pool does, so one batch is claimed and decoded while another generates; False
    when ``stop`` said so before a batch started (the batches in flight finish first).

    Slots are daemon threads: a second Ctrl-C ends the run at once instead of waiting for
    a batch in flight, whose items the caller hands back."""
    done: SimpleQueue[tuple[list[str], BatchReport | BaseException]] = SimpleQueue()
    running = 0
    stopped = False
    while True:
        while not stopped and running < max(1, res.settings.worker_slots) and queue.batches:
            if stop():
                stopped = True
                break
            ids = queue.batches.popleft()
            threading.Thread(
                target=_run_slot,
                args=(ids, queue.job_id, res, done),
                name="llava-batch-slot",
                daemon=True,
            ).start()
            running += 1
        if running == 0:
            return not stopped
        ids, got = _next_done(done)
        running -= 1
        if isinstance(got, BaseException):
            _wait_for(done, running)  # a dead engine fails the others fast; let them end
            raise got
        if not ids and got.claimed:
            queue.ring_again()
        if on_batch is not None:
            on_batch(ids, got)


_in_flight = 0
_in_flight_lock = threading.Lock()


def slots_in_flight() -> int:
    """Slot threads still working on a batch: after a second Ctrl-C the runner stops without
    them, and the process must then end without the interpreter's shutdown (see
    ``jobs.cli.errors.fail``), which would stop them inside the model's native code."""
    with _in_flight_lock:
        return _in_flight


def _run_slot(
    ids: list[str],
    job_id: str | None,
    res: WorkerResources,
    done: SimpleQueue[tuple[list[str], BatchReport | BaseException]],
) -> None:
    global _in_flight
    with _in_flight_lock:
        _in_flight += 1
    got: BatchReport | BaseException
    try:
        got = process_batch(ids, res, job_id=job_id)
    except BaseException as exc:  # handed to the runner's thread, which raises it
        got = exc
    with _in_flight_lock:  # done before the runner hears of it: a slot it heard of is not live
        _in_flight -= 1
    done.put((ids, got))


def _next_done(
    done: SimpleQueue[tuple[list[str], BatchReport | BaseException]],
) -> tuple[list[str], BatchReport | BaseException]:
    while True:  # wake up now and then: Ctrl-C reaches this thread between waits
        try:
            return done.get(timeout=0.2)
        except Empty:
            continue


def _wait_for(
    done: SimpleQueue[tuple[list[str], BatchReport | BaseException]], running: int
) -> None:
    for _ in range(running):
        _next_done(done)


def _sleep_unless_stopped(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def _seconds_to_wait(session_factory: SessionFactory, job_id: str) -> float | None:
    """None once the job has finished; otherwise how long until a backed-off item is due, or
    until the lease of an item another process holds runs out (one a killed run left behind)."""
    with session_factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status is None or status in TERMINAL_JOB_STATES:
            return None
        due = session.scalar(
            select(func.min(Item.not_before)).where(
                Item.job_id == job_id, Item.status == ItemStatus.queued
            )
        )
        expires = session.scalar(
            select(func.min(Item.lease_expires_at)).where(
                Item.job_id == job_id, Item.status == ItemStatus.running
            )
        )
    times = [t for t in (due, expires) if t is not None]
    if not times:
        return 0.2
    return min(max((min(times) - utcnow()).total_seconds(), 0.05), 30.0)
