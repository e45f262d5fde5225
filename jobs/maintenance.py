"""One maintenance pass, as the worker's sweeper thread and ``llava-batch sweep`` run it:
repair leases and lost messages, finalise jobs, fire due schedules, then delete what retention
says is due (a few seconds of it: the rest waits for the next pass)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from jobs.db import SessionFactory
from jobs.dispatch import Publisher
from jobs.retention.purge import PurgeReport, purge
from jobs.schedules import fire_due_schedules
from jobs.settings import Settings
from jobs.sweeper import SweepReport, sweep
from storage import Blobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    sweep: SweepReport
    jobs_created: int
    purged: PurgeReport = field(default_factory=PurgeReport)


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
        session_factory,
        blobs,
        publisher,
        input_prefixes=settings.input_prefixes,
        in_flight_lease=settings.submit_in_flight,
    )
    purged = purge(
        session_factory,
        blobs,
        batch=settings.purge_batch,
        seconds=settings.purge_seconds_per_pass,
    )
    return MaintenanceReport(report, len(created), purged)
