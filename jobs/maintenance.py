"""One maintenance pass, as the worker's sweeper thread and ``llava-batch sweep`` run it:
repair leases and lost messages, finalise jobs, fire due schedules, send what ended jobs send
(webhooks, results), then delete what retention says is due (a few seconds of each: the rest
waits for the next pass)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from jobs.db import SessionFactory
from jobs.delivery import deliver_due
from jobs.delivery.handlers import handlers_for
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
    delivered: int = 0  # webhooks sent and results written for ended jobs (jobs.delivery)

    def as_dict(self) -> dict[str, object]:
        """What ``sweep --json`` prints for the pass: the sweep's counts, then the rest."""
        return {**asdict(self.sweep), "jobs_created": self.jobs_created,
                "purged": self.purged.as_dict(), "delivered": self.delivered}  # fmt: skip

    def describe(self) -> str:
        """The pass in one line for people: what it did, the counts that are not zero."""
        s, purged = self.sweep, self.purged
        done = [
            (s.requeued, "item(s) re-queued after their lease ran out"),
            (s.failed_worker_lost, "item(s) failed worker_lost"),
            (s.cancelled, "item(s) of cancelled jobs cancelled"),
            (s.abandoned, "abandoned submit(s) cancelled"),
            (s.expired, "item(s) expired"),
            (s.republished, "item(s) re-published"),
            (s.rung, "doorbell(s) rung"),
            (s.finalised, "job(s) finalised"),
            (self.jobs_created, "scheduled job(s) created"),
            (self.delivered, "delivery(ies) sent"),
            (purged.jobs_deleted, "job(s) deleted by retention"),
            (purged.items_deleted, "item(s) deleted"),
            (purged.inputs_deleted, "stored input(s) deleted"),
        ]
        return ", ".join(f"{n} {what}" for n, what in done if n) or "nothing to repair"


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
    delivered = deliver_due(
        session_factory,
        handlers_for(session_factory, blobs, settings),
        seconds=settings.delivery_seconds_per_pass,
    )
    purged = purge(
        session_factory,
        blobs,
        batch=settings.purge_batch,
        seconds=settings.purge_seconds_per_pass,
    )
    return MaintenanceReport(report, len(created), purged, delivered)
