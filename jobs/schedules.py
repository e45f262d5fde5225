"""Scheduled extraction over an S3 prefix. Schedules live in the database, so they survive
restarts; firing is claimed with a conditional UPDATE, so two schedulers never create the same
job twice; an object counts as new when its key or its ETag is new.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import CroniterError, croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs.db import Schedule, ScheduleObject, SessionFactory, utcnow
from jobs.dispatch import Publisher, dispatch_items
from jobs.errors import RequestError, ScheduleNotFoundError
from jobs.limits import MAX_NAME_CHARS, check_text, is_utf8
from jobs.sources import DOCUMENT_EXTENSIONS, InputSpec
from jobs.states import JobKind
from jobs.submit import SubmitRequest, add_job, build_job, check_request
from storage import Blobs, ObjectInfo, StorageError, is_s3_uri

log = logging.getLogger(__name__)

_EVERY = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A schedule fires at least once a year and at most once a minute (cron's resolution; the
# sweeper looks every LLAVA_BATCH_SWEEP_INTERVAL_SECONDS anyway).
MIN_EVERY_SECONDS = 60
MAX_EVERY_SECONDS = 366 * 86400
_MAX_GAP = timedelta(seconds=MAX_EVERY_SECONDS)


@dataclass(frozen=True)
class Template:
    """What each firing submits, minus the sources."""

    model: str
    max_new_tokens: int
    batch_size: int
    schema: dict[str, Any]
    prompt: str | None = None
    pages: str = "all"
    dpi: int = 144

    def request(self, name: str, sources: list[str]) -> SubmitRequest:
        return SubmitRequest.of(
            JobKind.extract,
            sources,
            self.model,
            name=name,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            instructions=self.prompt,
            schema=self.schema,
            pages=self.pages,
            dpi=self.dpi,
        )


def parse_every(text: str) -> int:
    match = _EVERY.match(text.strip().lower())
    if not match or not match.group(1).strip("0"):
        raise RequestError(
            f"--every {text!r} is not a period: use a number and s, m, h or d, like 15m.",
            code="invalid_schedule",
        )
    digits, unit = match.groups()
    seconds = MAX_EVERY_SECONDS + 1 if len(digits) > 12 else int(digits) * _UNITS[unit]
    if not MIN_EVERY_SECONDS <= seconds <= MAX_EVERY_SECONDS:
        raise RequestError(
            f"--every {text!r} is out of range: a period is between 1m and 366d.",
            code="invalid_schedule",
        )
    return seconds


def check_cron(cron: str, now: datetime) -> None:
    """Five fields (minute hour day month weekday), firing at least once a year: a sixth field
    would be seconds to croniter, and "0 0 31 2 *" would never fire."""
    if len(cron.split()) != 5 or len(cron) > 200 or not croniter.is_valid(cron):
        raise RequestError(
            f"--cron {cron!r} is not a 5-field cron expression (minute hour day month weekday).",
            code="invalid_schedule",
        )
    try:
        times = croniter(cron, now)
        first: datetime = times.get_next(datetime)
        second: datetime = times.get_next(datetime)
    except CroniterError:  # croniter gives up on dates that do not exist
        first = second = now + 2 * _MAX_GAP
    if first - now > _MAX_GAP or second - first > _MAX_GAP:
        raise RequestError(
            f"--cron {cron!r} does not fire at least once a year.", code="invalid_schedule"
        )


def next_due(schedule: Schedule, after: datetime) -> datetime:
    if schedule.cron:
        return croniter(schedule.cron, after).get_next(datetime)  # type: ignore[no-any-return]
    assert schedule.every_seconds
    return after + timedelta(seconds=schedule.every_seconds)


def add_schedule(
    session_factory: SessionFactory,
    *,
    name: str,
    source: str,
    template: Template,
    every: str | None,
    cron: str | None,
    max_prompt_chars: int,
    now: datetime | None = None,
) -> Schedule:
    now = now or utcnow()
    if (every is None) == (cron is None):
        raise RequestError("Give exactly one of --every or --cron.", code="invalid_schedule")
    check_text(name, what="The schedule name", code="invalid_name", max_chars=MAX_NAME_CHARS)
    if cron is not None:
        check_cron(cron, now)
    if not is_s3_uri(source) or not is_utf8(source):
        raise RequestError("--source must be an s3://bucket/prefix/.", code="invalid_schedule")
    check_request(template.request(name, [source]), max_prompt_chars)
    schedule = Schedule(
        name=name,
        kind=JobKind.extract,
        source=source,
        cron=cron,
        every_seconds=None if every is None else parse_every(every),
        prompt=template.prompt,
        params=_params(template),
        paused=False,
        next_due_at=now,
    )
    schedule.next_due_at = next_due(schedule, now)
    with session_factory.begin() as session:
        if session.scalar(select(Schedule.id).where(Schedule.name == name)):
            raise RequestError(f"A schedule named {name!r} exists already.", code="schedule_exists")
        session.add(schedule)
    return schedule


def find_schedule(session: Session, name: str) -> Schedule:
    schedule = session.scalars(select(Schedule).where(Schedule.name == name)).one_or_none()
    if schedule is None:
        raise ScheduleNotFoundError(f"No schedule named {name!r}.")
    return schedule


def fire_due_schedules(
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    *,
    now: datetime | None = None,
    names: list[str] | None = None,
) -> list[str]:
    """Fires every due (or the named) schedule once; returns the ids of the jobs created."""
    now = now or utcnow()
    with session_factory() as session:
        # Named (run-now) schedules fire even when paused: pausing stops the clock, not an
        # operator who asks for one run, which is how a schedule is tried before it is resumed.
        # A paused schedule stays paused (its next due time is recomputed on resume).
        query = (
            select(Schedule).where(Schedule.name.in_(names))
            if names
            else select(Schedule).where(Schedule.paused.is_(False), Schedule.next_due_at <= now)
        )
        due = list(session.scalars(query))
    created = []
    for schedule in due:
        job_id = _fire(session_factory, blobs, publisher, schedule, now)
        if job_id:
            created.append(job_id)
    return created


def _fire(
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    schedule: Schedule,
    now: datetime,
) -> str | None:
    try:
        listed = [o for o in blobs.list_uri(schedule.source) if _is_document(o)]
    except StorageError as exc:
        log.warning("schedule %s cannot list %s: %s", schedule.name, schedule.source, exc)
        return None
    template = Template(prompt=schedule.prompt, **schedule.params)
    with session_factory.begin() as session:
        # The claim: only the scheduler whose UPDATE still sees the old due time goes on.
        claimed = session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id, Schedule.next_due_at == schedule.next_due_at)
            .values(next_due_at=next_due(schedule, now), last_run_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        seen = {
            (key, etag)
            for key, etag in session.execute(
                select(ScheduleObject.key, ScheduleObject.etag).where(
                    ScheduleObject.schedule_id == schedule.id
                )
            )
        }
        new = [o for o in listed if (o.key, o.etag) not in seen]
        if not new:
            log.info("schedule %s: nothing new under %s", schedule.name, schedule.source)
            return None
        inputs = [InputSpec(source=o.uri, uri=o.uri) for o in new]
        job, items = build_job(
            template.request(schedule.name, [o.uri for o in new]),
            inputs,
            [(o.uri, None) for o in new],
        )
        add_job(session, job, items, dispatched_at=now)
        session.add_all(
            ScheduleObject(schedule_id=schedule.id, key=o.key, etag=o.etag, job_id=job.id)
            for o in new
        )
        session.execute(
            update(Schedule).where(Schedule.id == schedule.id).values(last_job_id=job.id)
        )
    log.info("schedule %s fired job=%s items=%d", schedule.name, job.id, len(items))
    item_ids = [i.id for i in items]
    dispatch_items(
        session_factory, publisher, job.id, item_ids, batch_size=template.batch_size, stamp=now
    )
    return job.id


def _is_document(obj: ObjectInfo) -> bool:
    return any(obj.key.lower().endswith(ext) for ext in DOCUMENT_EXTENSIONS)


def _params(template: Template) -> dict[str, Any]:
    return {
        "model": template.model,
        "max_new_tokens": template.max_new_tokens,
        "batch_size": template.batch_size,
        "schema": template.schema,
        "pages": template.pages,
        "dpi": template.dpi,
    }
