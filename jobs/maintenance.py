"""One maintenance pass, as the worker's sweeper thread and ``llava-batch sweep`` run it:
repair leases and lost messages, finalise jobs, fire due schedules."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from jobs.db import SessionFactory
from jobs.dispatch import Publisher
from jobs.schedules import fire_due_schedules
from jobs.settings import Settings
from jobs.sweeper import SweepReport, sweep
from storage import Blobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    sweep: SweepReport
    jobs_created: int


def run_maintenance(
    session_factory: SessionFactory, blobs: Blobs, publisher: Publisher, settings: Settings
) -> MaintenanceReport:
    report = sweep(
        session_factory,
        publisher,
        max_attempts=settings.max_attempts,
        batch_size=settings.message_size,
        redispatch_after=timedelta(seconds=settings.redispatch_after_seconds),
        workers_kept_for=timedelta(seconds=settings.worker_rows_kept_for_seconds),
    )
    created = fire_due_schedules(
        session_factory, blobs, publisher, input_prefixes=settings.input_prefixes
    )
    return MaintenanceReport(report, len(created))
