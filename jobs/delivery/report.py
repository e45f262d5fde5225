"""What a job's end has sent, and tried to: ``llava-batch notifications JOB`` shows it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.db import Delivery, DeliveryAttempt


def deliveries_of(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Each delivery of the job (webhook, output) with its tries, oldest first: two queries,
    however many tries there were."""
    rows = list(
        session.scalars(
            select(Delivery)
            .where(Delivery.job_id == job_id)
            .order_by(Delivery.created_at, Delivery.what, Delivery.id)
        )
    )
    tries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if rows:
        for attempt in session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([row.id for row in rows]))
            .order_by(DeliveryAttempt.id)
        ):
            tries[attempt.delivery_id].append(
                {
                    "at": _iso(attempt.attempted_at),
                    "ok": attempt.ok,
                    "status_code": attempt.status_code,
                    "detail": attempt.detail,
                }
            )
    return [
        {
            "id": row.id,
            "job_id": row.job_id,
            "what": row.what,
            "target": row.target,
            "event": row.job_status,
            "status": row.status,
            "attempts": row.attempts,
            # A pending row's next try (while one is under way: when its lease runs out).
            "next_attempt_at": _iso(row.next_attempt_at) if row.status == "pending" else None,
            "created_at": _iso(row.created_at),
            "finished_at": _iso(row.finished_at),
            "last_error": row.last_error,
            "result": row.result,
            "tries": tries[row.id],
        }
        for row in rows
    ]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
