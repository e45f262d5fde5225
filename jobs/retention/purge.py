"""Deleting jobs: the ones a user names (``llava-batch delete``) and the ones whose retention
has passed (the sweeper's pass, ``llava-batch purge``), a bounded transaction at a time, then
the stored inputs no job references any more."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from jobs.db import SessionFactory, utcnow
from jobs.lifecycle import delete_step, jobs_being_deleted, mark_deleting, mark_retained
from jobs.retention.blobs import collect_blobs, queue_inputs_of
from storage import Blobs

log = logging.getLogger(__name__)

# Jobs marked for deletion by retention per transaction.
_MARK = 100


@dataclass(frozen=True)
class PurgeReport:
    """What one purge did. ``finished``: nothing was left to delete when it stopped (False:
    its time ran out, or a submit in flight made the inputs wait; the next pass goes on)."""

    jobs_marked: int = 0
    jobs_deleted: int = 0
    items_deleted: int = 0
    inputs_deleted: int = 0
    inputs_waiting: bool = False
    finished: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "jobs_marked": self.jobs_marked,
            "jobs_deleted": self.jobs_deleted,
            "items_deleted": self.items_deleted,
            "inputs_deleted": self.inputs_deleted,
            "inputs_waiting": self.inputs_waiting,
            "finished": self.finished,
        }


def delete_jobs(
    session_factory: SessionFactory,
    blobs: Blobs,
    job_ids: Sequence[str],
    *,
    batch: int,
    keep_inputs: bool = False,
) -> PurgeReport:
    """Deletes the ended jobs ``job_ids`` (all of them, or none: see ``mark_deleting``), then
    the stored inputs no other job references, unless ``keep_inputs``."""
    mark_deleting(session_factory, job_ids, keep_inputs=keep_inputs)
    return _work(session_factory, blobs, only=job_ids, batch=batch, deadline=None, marked=0)


def purge(
    session_factory: SessionFactory,
    blobs: Blobs,
    *,
    batch: int,
    seconds: float | None = None,
    now: datetime | None = None,
) -> PurgeReport:
    """Marks the jobs whose retention has passed, then deletes every job being deleted (also
    one a crashed delete or purge left half-way) and collects inputs; with ``seconds``, stops
    after about that long (the sweeper's pass), else goes on until nothing is left."""
    now = now or utcnow()
    deadline = None if seconds is None else time.monotonic() + seconds
    marked = 0
    while n := mark_retained(session_factory, now=now, limit=_MARK):
        marked += n
        if _past(deadline):
            return PurgeReport(jobs_marked=marked, finished=False)
    return _work(session_factory, blobs, only=None, batch=batch, deadline=deadline, marked=marked)


def _work(
    session_factory: SessionFactory,
    blobs: Blobs,
    *,
    only: Sequence[str] | None,
    batch: int,
    deadline: float | None,
    marked: int,
) -> PurgeReport:
    jobs = items = 0
    pending = list(only) if only is not None else jobs_being_deleted(session_factory)
    seen: set[str] = set()
    while pending:
        seen.update(pending)
        for job_id in pending:
            after: int | None = None
            while True:
                if _past(deadline):
                    return PurgeReport(marked, jobs, items, finished=False)
                step = delete_step(
                    session_factory,
                    job_id,
                    batch=batch,
                    queue_inputs=queue_inputs_of,
                    after_seq=after,
                )
                if step is None:  # gone, or another process is deleting it
                    break
                items += step.items
                after = step.last_seq
                if step.job_gone:
                    jobs += 1
                    break
        # Jobs another process holds are skipped, not waited for: asking again only for new
        # ones, never for one this call has already tried.
        pending = (
            []
            if only is not None
            else [j for j in jobs_being_deleted(session_factory) if j not in seen]
        )
    collected = collect_blobs(session_factory, blobs, deadline=deadline)
    report = PurgeReport(
        jobs_marked=marked,
        jobs_deleted=jobs,
        items_deleted=items,
        inputs_deleted=collected.deleted,
        inputs_waiting=collected.deferred,
        finished=not (collected.deferred or collected.out_of_time),
    )
    if report != PurgeReport():
        log.info("purge %s", report.as_dict())
    return report


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
