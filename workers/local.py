"""The embedded one-process mode: same pipeline, no broker, an in-process worker.

Used by ``llava-batch run``: submit with a publisher that queues batches in memory, then work
through them here. The sweeper's finaliser runs at the end, as it would in a deployment.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import timedelta

from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher, Publisher
from jobs.states import TERMINAL_JOB_STATES, ItemStatus
from jobs.submit import SubmitRequest, SubmitResult, submit_job
from jobs.sweeper import sweep
from workers.pipeline import process_batch
from workers.resources import WorkerResources

log = logging.getLogger(__name__)


class InProcessQueue:
    def __init__(self) -> None:
        self.batches: deque[list[str]] = deque()
        self.publisher: Publisher = CallbackPublisher(lambda _job, ids: self.batches.append(ids))


def run_job_locally(
    request: SubmitRequest, res: WorkerResources, *, max_prompt_chars: int
) -> SubmitResult:
    queue = InProcessQueue()
    submitted = submit_job(
        request,
        session_factory=res.session_factory,
        blobs=res.blobs,
        publisher=queue.publisher,
        max_prompt_chars=max_prompt_chars,
    )
    # Work through the batches, then let a sweep re-publish what was handed back (after its
    # storage backoff) and finalise the job. The in-memory queue is drained before each sweep,
    # so any queued item with a dispatch stamp has no message: re-publish at once.
    while True:
        while queue.batches:
            process_batch(queue.batches.popleft(), res)
        sweep(
            res.session_factory,
            queue.publisher,
            max_attempts=res.max_attempts,
            batch_size=res.batch_size,
            redispatch_after=timedelta(0),
        )
        if queue.batches:
            continue
        wait = _seconds_to_wait(res.session_factory, submitted.job_id)
        if wait is None:
            return submitted
        time.sleep(wait)


def _seconds_to_wait(session_factory: SessionFactory, job_id: str) -> float | None:
    """None once the job has finished; otherwise how long until a backed-off item is due."""
    with session_factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status is None or status in TERMINAL_JOB_STATES:
            return None
        due = session.scalar(
            select(func.min(Item.not_before)).where(
                Item.job_id == job_id, Item.status == ItemStatus.queued
            )
        )
    if due is None:
        return 0.2
    return min(max((due - utcnow()).total_seconds(), 0.05), 30.0)
