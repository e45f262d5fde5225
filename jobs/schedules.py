"""Schedules: a job of any kind (caption, extract, ask) over what is new under an S3 prefix or a
local folder, at every due time. Schedules live in the database, so they survive restarts.

A firing is claimed with a conditional UPDATE of the due time, so however many schedulers run
(every worker's sweeper, ``llava-batch sweep``), one fires. It then makes one job of the inputs
whose (key, version) it has not processed before (``jobs.schedule_sources``), through the rows
and the dispatch of any submitted job (``build_job``, ``add_job``, ``dispatch_items``): the
job's model picks its queue as a submitted job's does.

The claim commits before the inputs are stored (copying a folder's new files into the blob store
may take a while, and must not hold the row, or SQLite's write lock, meanwhile). A scheduler that
dies in between only delays those inputs to the next due time: they are still new then. Two
firings that overlap (a period shorter than one slow firing) cannot both record an input: the
unique (schedule, key, version) constraint refuses the second one's transaction, job and all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from croniter import CroniterError, croniter
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import (
    Item,
    Job,
    Schedule,
    ScheduleObject,
    SessionFactory,
    commit_without_flush,
    utcnow,
)
from jobs.delivery.targets import fill_schedule
from jobs.dispatch import Publisher, dispatch_items
from jobs.durations import parse_period
from jobs.errors import RequestError, ScheduleNotFoundError
from jobs.input_policy import INPUT_NOT_ALLOWED, InputPolicy
from jobs.kinds.base import ItemAsk
from jobs.kinds.registry import get_kind
from jobs.lifecycle import finalise_jobs
from jobs.limits import MAX_NAME_CHARS, check_text
from jobs.schedule_history import not_seen, prune_history
from jobs.schedule_sources import build_inputs, build_source, list_source
from jobs.settings import DEFAULT_MAX_INPUT_BYTES
from jobs.states import ItemStatus
from jobs.submit.in_flight import IN_FLIGHT_LEASE, InFlight, in_flight
from jobs.submit.input_store import store_inputs
from jobs.submit.job import add_job, with_input_error
from jobs.submit.request import SubmitRequest, build_job, check_request
from jobs.submit.sources import DOCUMENT_EXTENSIONS, IMAGE_EXTENSIONS
from storage import Blobs, ObjectInfo, StorageError

log = logging.getLogger(__name__)

# A schedule fires at least once a year and at most once a minute (cron's resolution; the
# sweeper looks every LLAVA_BATCH_SWEEP_INTERVAL_SECONDS anyway).
MIN_EVERY_SECONDS = 60
MAX_EVERY_SECONDS = 366 * 86400
_MAX_GAP = timedelta(seconds=MAX_EVERY_SECONDS)


def parse_every(text: str) -> int:
    return parse_period(
        text,
        option="--every",
        low=MIN_EVERY_SECONDS,
        high=MAX_EVERY_SECONDS,
        code="invalid_schedule",
    )


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
    request: SubmitRequest,
    every: str | None,
    cron: str | None,
    max_prompt_chars: int,
    now: datetime | None = None,
) -> Schedule:
    """Stores a schedule that submits ``request`` (its kind, model and parameters; the sources
    and name are the schedule's) at every due time. The request is checked as ``submit`` checks
    it, with the same codes; nothing is written when anything is refused."""
    now = now or utcnow()
    if (every is None) == (cron is None):
        raise RequestError("Give exactly one of --every or --cron.", code="invalid_schedule")
    check_text(name, what="The schedule name", code="invalid_name", max_chars=MAX_NAME_CHARS)
    if cron is not None:
        check_cron(cron, now)
    every_seconds = None if every is None else parse_every(every)
    source = build_source(source)
    InputPolicy(request.input_prefixes).check_source(source)
    request = replace(request, sources=[source], name=name, idempotency_key=None)
    check_request(_filled(request, name), max_prompt_chars)
    kind = get_kind(request.kind)
    schedule = Schedule(
        name=name,
        kind=kind.name,
        source=source,
        cron=cron,
        every_seconds=every_seconds,
        prompt=kind.job_prompt(request.params),  # what jobs.prompt will say
        params=_stored(request),
        retain_seconds=request.retain_seconds,
        paused=False,
        # As given ({schedule} and all): each firing's job gets it filled (read_request).
        output_uri=request.output_uri,
        output_format=request.output_format,
        next_due_at=now,
    )
    schedule.next_due_at = next_due(schedule, now)
    schedule.notify_url = request.notify_url  # every job it fires tells the same URL
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


def read_request(schedule: Schedule) -> SubmitRequest:
    """What ``schedule`` submits (its sources: each firing's); ValidationError or RequestError
    for a row that no longer decodes (a kind this version does not have)."""
    stored = schedule.params
    kind = get_kind(schedule.kind)
    if "request" in stored:
        given = stored["request"]
    else:  # a row written before schedules had kinds: extraction, its instructions in `prompt`
        given = {k: v for k, v in stored.items() if k != "model"}
        given["instructions"] = schedule.prompt
    request = SubmitRequest(
        kind=kind.name,
        sources=[],
        model=stored["model"],
        params=kind.params_type.model_validate(given),
        name=schedule.name,
        max_input_bytes=stored.get("max_input_bytes", DEFAULT_MAX_INPUT_BYTES),
        priority=int(stored.get("priority", 0)),
        completion_window_seconds=stored.get("completion_window_seconds"),
        reuse=bool(stored.get("reuse", False)),
        retain_seconds=schedule.retain_seconds,
        notify_url=schedule.notify_url,
    )
    return _filled(request, schedule.name, schedule.output_uri, schedule.output_format)


def _filled(
    request: SubmitRequest,
    name: str,
    target: str | None = None,
    fmt: str | None = None,
) -> SubmitRequest:
    """``request`` with its target's ``{schedule}`` filled in by the schedule's ``name``
    (``target``, ``fmt``: the schedule's, for a stored one); {job} and {date} are each job's
    (``build_job``)."""
    target = target if target is not None else request.output_uri
    if target is None:
        return request
    return replace(
        request,
        output_uri=fill_schedule(target, name),
        output_format=fmt if fmt is not None else request.output_format,
    )


def _stored(request: SubmitRequest) -> dict[str, Any]:
    return {
        "model": request.model,
        # The limit in force when the schedule was added: local files are checked at firing.
        "max_input_bytes": request.max_input_bytes,
        "request": request.params.model_dump(mode="json", by_alias=True),
        # How each firing's job shares the fleet: a scheduled extraction usually goes first,
        # and its window starts when it fires.
        "priority": request.priority,
        "completion_window_seconds": request.completion_window_seconds,
        # An invoice sent again (a new object, the same bytes) gets its earlier answer (--reuse).
        "reuse": request.reuse,
    }


def fire_due_schedules(
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    *,
    now: datetime | None = None,
    names: list[str] | None = None,
    input_prefixes: Sequence[str] = (),
    in_flight_lease: timedelta = IN_FLIGHT_LEASE,
) -> list[str]:
    """Fires every due (or the named) schedule once; returns the ids of the jobs created.

    A due schedule whose source cannot be listed here (a folder on another machine, a bucket
    out of reach) is left, unclaimed, to a scheduler that can; a named one raises instead.
    ``input_prefixes``: LLAVA_BATCH_INPUT_PREFIXES where it fires, checked at every firing (the
    list may have narrowed since the schedule was added). ``in_flight_lease``: how long a
    firing's registration in ``submits_in_flight`` lives unrenewed (as a submit's)."""
    now = now or utcnow()
    policy = InputPolicy.of(input_prefixes)
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
        job_id = _fire(
            session_factory,
            blobs,
            publisher,
            schedule,
            now,
            policy,
            strict=bool(names),
            lease=in_flight_lease,
        )
        if job_id:
            created.append(job_id)
    return created


def _fire(
    session_factory: SessionFactory,
    blobs: Blobs,
    publisher: Publisher,
    schedule: Schedule,
    now: datetime,
    policy: InputPolicy,
    *,
    strict: bool,
    lease: timedelta,
) -> str | None:
    if not policy.allows(schedule.source):  # never listed
        refusal = RequestError(policy.refusal(schedule.source), code=INPUT_NOT_ALLOWED)
        if strict:
            raise refusal
        if _claim(session_factory, schedule, now):  # once per due time, not every sweep
            log.error("schedule %s cannot fire: %s", schedule.name, refusal.message)
        return None
    try:
        request = read_request(schedule)
    except (RequestError, ValidationError) as exc:
        if strict:
            raise
        if _claim(session_factory, schedule, now):  # once per due time, not every sweep
            log.error("schedule %s cannot fire, its stored request: %s", schedule.name, exc)
        return None
    kind = get_kind(request.kind)
    extensions = DOCUMENT_EXTENSIONS if kind.reads_documents else IMAGE_EXTENSIONS
    try:
        listed = list_source(schedule.source, blobs, extensions)
    except (RequestError, StorageError) as exc:
        if strict:
            raise
        log.warning("schedule %s cannot list %s: %s", schedule.name, schedule.source, exc)
        return None
    if not _claim(session_factory, schedule, now, listed=listed):
        return None
    new = not_seen(session_factory, schedule.id, listed)
    if not new:
        log.info("schedule %s: nothing new under %s", schedule.name, schedule.source)
        return None
    with in_flight(session_factory, lease) as flight:
        written = _write_firing(
            session_factory, blobs, schedule, request, new, extensions, flight, now, strict=strict
        )
    if written is None:
        return None
    job, items = written
    log.info(
        "schedule %s fired job=%s kind=%s items=%d", schedule.name, job.id, job.kind, len(items)
    )
    queued = [i.id for i in items if i.status == ItemStatus.queued]
    if not queued:  # every new input was refused on its own: no worker will end this job
        finalise_jobs(session_factory, [job.id], now=now)
    dispatch_items(
        session_factory,
        publisher,
        job.id,
        queued,
        model=job.model,
        batch_size=request.params.batch_size,
        stamp=now,
    )
    return job.id


def _write_firing(
    session_factory: SessionFactory,
    blobs: Blobs,
    schedule: Schedule,
    request: SubmitRequest,
    new: list[ObjectInfo],
    extensions: frozenset[str],
    flight: InFlight,
    now: datetime,
    *,
    strict: bool,
) -> tuple[Job, list[Item]] | None:
    """Stores a firing's new inputs, then writes its job in one transaction that first
    confirms the firing's registration (as a submit's); None: no job this time."""
    try:
        inputs = build_inputs(
            schedule.source,
            new,
            blobs=blobs,
            extensions=extensions,
            max_input_bytes=request.max_input_bytes,
        )
        stored = store_inputs(inputs, blobs)  # local files, as submit stores them
    except RequestError as exc:  # a file that changed while being stored: next time
        if strict:
            raise
        log.warning("schedule %s: no job this time: %s", schedule.name, exc)
        return None
    asks = [with_input_error(ItemAsk(), spec) for spec in inputs]
    request = replace(request, sources=[spec.source for spec in inputs])
    job, items = build_job(request, inputs, stored, asks)
    try:
        with session_factory.begin() as session:
            flight.confirm(session)
            add_job(session, job, items, dispatched_at=now)
            session.add_all(
                ScheduleObject(schedule_id=schedule.id, key=o.key, etag=o.etag, job_id=job.id)
                for o in new
            )
            session.flush()  # the unique version constraint speaks here, before the update
            session.execute(
                update(Schedule).where(Schedule.id == schedule.id).values(last_job_id=job.id)
            )
    except IntegrityError as exc:  # the firing before this one, slower than the period
        log.warning(
            "schedule %s: no job, an overlapping firing recorded these inputs first (%s)",
            schedule.name,
            exc.orig,
        )
        return None
    except RequestError as exc:  # stalled past its registration: its inputs are new next time
        if strict:
            raise
        log.warning("schedule %s: no job this time: %s", schedule.name, exc)
        return None
    return job, items


def _claim(
    session_factory: SessionFactory,
    schedule: Schedule,
    now: datetime,
    *,
    listed: Sequence[ObjectInfo] | None = None,
) -> bool:
    """Only the scheduler whose UPDATE still sees the due time it read goes on. ``listed``: a
    full listing of the source, whose step of forgetting is taken in the claim's transaction
    (``jobs.schedule_history.prune_history`` says why there)."""
    with session_factory.begin() as session:
        # Taken back by a database crash, the claim is made again: never under a job, whose
        # own commit flushes the log before it.
        commit_without_flush(session)
        claimed = session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id, Schedule.next_due_at == schedule.next_due_at)
            .values(next_due_at=next_due(schedule, now), last_run_at=now)
            .returning(Schedule.history_cursor)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            return False
        if listed is not None:
            prune_history(session, schedule.id, listed, cursor=claimed.history_cursor)
    return True
