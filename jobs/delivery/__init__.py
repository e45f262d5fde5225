"""What a job's end sends downstream: a signed webhook (``notify_url``), its results written
where they are needed (``output_uri``).

An outbox: ``queue_deliveries`` writes one ``deliveries`` row per thing to send in the
transaction that ends the job (``jobs.lifecycle.finalise``), so a job never ends without them
and a crash loses none. ``deliver_due`` (the sweeper's, never a worker's model thread) sends
what is due: it takes a row by moving its next attempt past a lease, runs the handler of its
kind outside any transaction, then records the attempt. Delivery is at least once: a sweeper
that dies between sending and recording sends again when the lease runs out, with the same
delivery id, so receivers and writers make a repeat harmless.
"""

from __future__ import annotations

from jobs.delivery.outbox import (
    RETRY_DELAYS,
    Attempt,
    DeliveryTask,
    Handler,
    deliver_due,
    next_attempt,
    queue_deliveries,
)

__all__ = [
    "RETRY_DELAYS",
    "Attempt",
    "DeliveryTask",
    "Handler",
    "deliver_due",
    "next_attempt",
    "queue_deliveries",
]
