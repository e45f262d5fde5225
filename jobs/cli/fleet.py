"""What the CLI tells about the fleet: whether a live worker serves a job's model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.states import ItemStatus, JobStatus

if TYPE_CHECKING:
    from jobs.cli.context import Context
    from jobs.progress import JobProgress


def is_served(ctx: Context, model: str) -> bool:
    """Whether a worker serving ``model`` beat within three heartbeats (the setting
    ``LLAVA_BATCH_WORKER_HEARTBEAT_SECONDS``)."""
    from jobs.fleet import live_workers

    count = live_workers(
        ctx.session_factory, model, heartbeat_seconds=ctx.settings.worker_heartbeat_seconds
    )
    return count > 0


def with_waiting(progress: JobProgress, served: Callable[[], bool]) -> JobProgress:
    """``progress``, saying whether its queued items wait for a worker nobody runs (``served``:
    whether a live worker serves its model, asked only of an open job). While none does it has
    no rate and no ETA: nothing moves it, and a rate from its past (a worker that has since
    stopped) would promise an end that is not coming."""
    if progress.status not in (JobStatus.queued, JobStatus.in_progress):
        return progress
    if served():
        return replace(progress, waiting_for_worker=False)
    return replace(
        progress,
        waiting_for_worker=progress.counts.get(ItemStatus.queued, 0) > 0,
        items_per_second=None,
        eta_seconds=None,
    )
