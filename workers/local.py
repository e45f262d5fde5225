"""The embedded one-process mode: same pipeline, no broker, an in-process worker.

Used by ``llava-batch run``: submit with a publisher that queues batches in memory, then work
through them here. The sweeper's finaliser runs at the end, as it would in a deployment.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from jobs.dispatch import CallbackPublisher, Publisher
from jobs.submit import SubmitRequest, SubmitResult, submit_job
from jobs.sweeper import sweep
from workers.pipeline import BatchReport, process_batch
from workers.resources import WorkerResources

log = logging.getLogger(__name__)


class InProcessQueue:
    def __init__(self) -> None:
        self.batches: deque[list[str]] = deque()
        self.publisher: Publisher = CallbackPublisher(lambda _job, ids: self.batches.append(ids))


def run_job_locally(
    request: SubmitRequest,
    res: WorkerResources,
    *,
    max_prompt_chars: int,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> SubmitResult:
    queue = InProcessQueue()
    submitted = submit_job(
        request,
        session_factory=res.session_factory,
        blobs=res.blobs,
        publisher=queue.publisher,
        max_prompt_chars=max_prompt_chars,
    )
    while queue.batches:
        report = process_batch(queue.batches.popleft(), res)
        if on_batch is not None:
            on_batch(report)
    sweep(
        res.session_factory,
        queue.publisher,
        max_attempts=res.max_attempts,
        batch_size=res.batch_size,
    )
    while queue.batches:  # anything the sweep found undispatched
        process_batch(queue.batches.popleft(), res)
    return submitted
