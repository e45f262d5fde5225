"""The embedded one-process mode: same pipeline, no broker, an in-process worker.

Used by ``llava-batch run``: submit with a publisher that queues batches in memory, then work
through them here. The sweeper's finaliser runs at the end, as it would in a deployment.
"""

from __future__ import annotations

import logging
from collections import deque

from jobs.dispatch import CallbackPublisher, Publisher
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
    # Work through the batches, then let a sweep re-queue what was handed back (a transient
    # failure) and finalise the job; ends because every hand-back uses up an attempt.
    while True:
        while queue.batches:
            process_batch(queue.batches.popleft(), res)
        sweep(
            res.session_factory,
            queue.publisher,
            max_attempts=res.max_attempts,
            batch_size=res.batch_size,
        )
        if not queue.batches:
            return submitted
