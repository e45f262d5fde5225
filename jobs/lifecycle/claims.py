"""Claim, heartbeat and hand-back: the transitions a worker makes on its own batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from jobs.db import Item, Job, SessionFactory, new_id, utcnow
from jobs.fleet import Serving
from jobs.hooks import reached
from jobs.lifecycle.common import (
    CLOSING_JOB_STATES,
    OPEN_JOB_STATES,
    ClaimedItem,
    is_postgres,
    job_of_item_is,
)
from jobs.lifecycle.finalise import finalise_jobs
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)


def claim_items(
    session_factory: SessionFactory,
    item_ids: Sequence[str],
    *,
    worker: str,
    lease_seconds: int,
    serving: Serving | None = None,
    lease_token: str | None = None,
    now: datetime | None = None,
) -> list[ClaimedItem]:
    """Moves still-queued items to running under one lease token and returns them.

    A duplicated or redelivered message finds nothing queued and gets an empty list. Rows that a
    producer, a sweeper or another claim holds locked are waited for (bounded by the lock
    timeout), never skipped: skipping them would drop the message's items until a redispatch.
    With ``serving`` only items of jobs for that model are claimed (a message that reached the
    wrong queue claims nothing; the sweeper re-publishes to the right one), and each claimed item
    records the model, revision and quantisation that will produce it.

    ``lease_token``: the message's own token (a fresh one if not given). A retry passes the same
    one, and so is idempotent: the claim commits, then starting the job runs in a second
    transaction, and when that fails (a lock timeout while a cancel holds the job row, a dropped
    connection) or the claim's COMMIT reply is lost, the retry returns the items the first try
    already holds under this token, instead of claiming nothing under a new one while they sit
    ``running`` until their lease runs out (docs/design.md#I3).
    """
    now = now or utcnow()
    token = lease_token or new_id()
    params = {
        "c_ids": list(item_ids),
        **_lease_params(token, now, lease_seconds=lease_seconds, worker=worker, serving=serving),
    }
    with session_factory.begin() as session:
        reached("claim:begin")
        claim, claimed_rows = _claim_statements(is_postgres(session), routed=serving is not None)
        session.execute(claim, params)
        rows = session.execute(claimed_rows, {"c_token": token}).all()
    reached("claim:committed")  # the items are ours; the job is not started yet
    claimed = [_claimed_item(row, token) for row in rows]
    # The first claim of a job starts it; later claims need no write. A retry under the same
    # token reads the job's status again, so it starts a job the first try did not.
    queued_jobs = {row.job_id for row in rows if row.job_status == JobStatus.queued}
    if queued_jobs:
        _start_jobs(session_factory, queued_jobs, now=now)
    return claimed


@cache
def _claim_statements(postgres: bool, *, routed: bool) -> tuple[Update, Select[Any]]:
    """The claim's UPDATE and the read of what it claimed, built once per shape: claiming is
    the hot path, and a prebuilt Core statement with bind parameters skips the per-call
    statement building (see ``_RECORD`` in ``jobs.lifecycle.records``)."""
    item_table: Table = Item.__table__  # type: ignore[assignment]
    job_table: Table = Job.__table__  # type: ignore[assignment]
    items, jobs = item_table.c, job_table.c
    inner = item_table.alias()
    now: ColumnElement[datetime] = bindparam("c_now", type_=items.started_at.type)
    target = (
        select(inner.c.id)
        .where(
            inner.c.id.in_(bindparam("c_ids", expanding=True)), inner.c.status == ItemStatus.queued
        )
        .order_by(inner.c.id)  # one lock order for every claimer: no deadlock
    )
    if postgres:
        target = target.with_for_update()
    job_open = select(jobs.id).where(
        jobs.id == items.job_id, jobs.status.in_(OPEN_JOB_STATES), within_window(jobs, now)
    )
    values = _claimed_values(items, now, routed=routed)
    if routed:
        job_open = job_open.where(jobs.model == bindparam("c_model", type_=jobs.model.type))
        # Strict priority holds for a message that names its items too (an item that lost a
        # worker, sent alone): it waits while a job of higher priority has work to claim, and
        # the sweeper sends it again (docs/design.md#fair-share-and-priority).
        job_open = job_open.where(~higher_priority_has_work(jobs, now))
    claim = (
        update(item_table)
        .where(
            items.id.in_(target),
            items.status == ItemStatus.queued,
            or_(items.not_before.is_(None), items.not_before <= now),
            job_open.exists(),
        )
        .values(values)
    )
    claimed_rows = (
        select(
            items.id,
            items.job_id,
            items.source,
            items.input_uri,
            items.prompt,
            items.attempts,
            items.transient_failures,
            items.request,
            items.reuse_key,
            jobs.prompt.label("job_prompt"),
            jobs.params,
            jobs.kind,
            jobs.status.label("job_status"),
        )
        .join_from(item_table, job_table, jobs.id == items.job_id)
        .where(
            items.lease_token == bindparam("c_token", type_=items.lease_token.type),
            # Running: read through the (status, lease_expires_at) index, which holds only
            # the fleet's batches in flight, not a scan of every item by token.
            items.status == ItemStatus.running,
        )
        .order_by(items.seq)
    )
    return claim, claimed_rows


def within_window(jobs: Any, now: Any) -> ColumnElement[bool]:
    """The job's completion window has not passed (or it has none): its items may start."""
    return or_(jobs.expires_at.is_(None), jobs.expires_at > now)


def claimable(items: Any, now: Any) -> ColumnElement[bool]:
    """A queued item a doorbell may take: due, and never lost a worker (such an item is sent
    alone, by name, by the sweeper: docs/design.md#I11)."""
    return and_(
        items.status == ItemStatus.queued,
        items.attempts == 0,
        or_(items.not_before.is_(None), items.not_before <= now),
    )


def has_claimable(job_id: Any, now: Any) -> ColumnElement[bool]:
    """Whether the job has a claimable item. Asked as ``min(seq) IS NOT NULL`` rather than
    EXISTS for the reason ``jobs.lifecycle.finalise.has_item`` gives: it stays one probe of the
    (job_id, status, seq) index per job, however many items the jobs hold."""
    item_table: Table = Item.__table__  # type: ignore[assignment]
    probe = item_table.alias()
    return (
        select(func.min(probe.c.seq))
        .where(probe.c.job_id == job_id, claimable(probe.c, now))
        .scalar_subquery()
        .is_not(None)
    )


def higher_priority_has_work(jobs: Any, now: Any) -> ColumnElement[bool]:
    """Whether an open job of the same model and a higher priority than ``jobs``' row has a
    claimable item: while one has, strict priority claims nothing of this job (I13)."""
    job_table: Table = Job.__table__  # type: ignore[assignment]
    higher = job_table.alias()
    return (
        select(higher.c.id)
        .where(
            higher.c.model == jobs.model,
            higher.c.status.in_(OPEN_JOB_STATES),
            higher.c.priority > jobs.priority,
            within_window(higher.c, now),
            has_claimable(higher.c.id, now),
        )
        .exists()
    )


def claim_next(
    session_factory: SessionFactory,
    *,
    worker: str,
    lease_seconds: int,
    serving: Serving | None = None,
    job_id: str | None = None,
    lease_token: str | None = None,
    retry: bool = False,
    now: datetime | None = None,
) -> list[ClaimedItem]:
    """A doorbell's claim: the next batch of the next job in turn, chosen here in SQL.

    The job is the open one of the worker's model (``serving``; any model without it), within
    its completion window, with a claimable item, of the highest priority, and among those the
    one served longest ago (``turn_at``; a job never served first): jobs alternate batch by
    batch whatever their size or submit order. Its turn is stamped and it is started in the
    same statement that picks it, then up to its ``--batch-size`` next queued items (by seq)
    are claimed under one lease token, as ``claim_items`` claims a named batch. ``job_id``:
    only that job (the one-process runner's own).

    The job row is taken first, then its items: the order a cancel takes them in. On
    PostgreSQL a job whose row another claim holds is skipped for the next one in turn of the
    same priority, never for a lower one; when no job it may take is free, the first in order
    is waited for. A claim that finds the job it took spent (the claim ahead took its last
    items) picks again. A ``retry`` under the same ``lease_token`` returns what an earlier try
    holds under it, if any (docs/design.md#I3).
    """
    now = now or utcnow()
    token = lease_token or new_id()
    if retry:
        # A retry of a claim that committed is the same claim. Read on its own: on SQLite a
        # transaction that reads first cannot take the write lock once another writer has
        # committed, so the claim's transaction starts with its write.
        with session_factory() as session:
            held = session.execute(_claimed_rows(), {"c_token": token}).all()
        if held:
            return [_claimed_item(row, token) for row in held]
    params: dict[str, Any] = {"p_now": now}
    if serving is not None:
        params["p_model"] = serving.model
    if job_id is not None:
        params["p_job"] = job_id
    claim_params = _lease_params(
        token, now, lease_seconds=lease_seconds, worker=worker, serving=serving
    )
    for _ in range(_PICKS):
        picked, rows = _claim_next_once(
            session_factory, params, claim_params, routed=serving is not None
        )
        # On PostgreSQL a claim can find the job it took spent: the claim whose row lock it
        # waited out, or one that committed between its snapshot and its lock, took the last
        # items (the pick's test for work reads the snapshot). Pick again, so this doorbell
        # takes the next job in order (a lower priority one, say) instead of nothing: a
        # doorbell that finds nothing is not rung again (docs/design.md#I14).
        if picked is None or rows:
            break
    reached("claim_next:committed")
    if picked is None:
        return []
    job = {"kind": picked.kind, "job_prompt": picked.prompt, "params": picked.params}
    return [
        _claimed_item(SimpleNamespace(**row._mapping, **job), token)
        for row in sorted(rows, key=lambda row: row.seq)
    ]


_PICKS = 3  # a claim that found the job it took spent picks again, this many times in all


def _claim_next_once(
    session_factory: SessionFactory,
    params: dict[str, Any],
    claim_params: dict[str, Any],
    *,
    routed: bool,
) -> tuple[Any, list[Any]]:
    """One transaction of ``claim_next``: the job picked (None: no job has work) and the items
    claimed of it."""
    scoped = "p_job" in params
    with session_factory.begin() as session:
        postgres = is_postgres(session)
        reached("claim_next:begin")
        shape = (routed, scoped)
        picked = session.execute(_pick_statement(postgres, *shape, skip=postgres), params).first()
        if picked is None and postgres:  # the jobs it may take are held
            picked = _pick_past_held(session, shape, params)
        if picked is None:
            return None, []
        reached("claim_next:picked")
        job_params = {**claim_params, "c_job": picked.id, "c_limit": _batch_size_of(picked.params)}
        # The claimed rows come back with the UPDATE (RETURNING): no read after it, which would
        # find them among every running item of the fleet by their token.
        rows = session.execute(_next_items_statement(postgres, routed=routed), job_params).all()
        if postgres and not rows:
            # Every claimable item of the job was skipped as held. Not by another doorbell
            # (claims of one job queue on its row, taken above): by a writer holding them for
            # an instant, such as the sweeper stamping the items it has just rung for. Wait for
            # those, as a named claim does (docs/design.md#I3): skipped, this doorbell would
            # claim nothing and the job would lose its turn, the first-batch drop again.
            rows = session.execute(
                _next_items_statement(True, routed=routed, wait=True), job_params
            ).all()
    return picked, list(rows)


# How long a doorbell's claim waits for a held row of the highest priority with work before it
# takes the next job in order instead: longer than another claim holds a row, far shorter than
# a retry does (its whole transaction: 74 s for a million items, docs/benchmarks.md).
HELD_WAIT_MS = 1000


def _pick_past_held(session: Any, shape: tuple[bool, bool], params: dict[str, Any]) -> Any:
    """PostgreSQL's pick when every job it may take is held. Another claim holds a job row for
    an instant: wait for it, so a job of higher priority keeps its place (I13). A retry holds
    its job's row for its whole transaction: after ``HELD_WAIT_MS``, take the next free job in
    order, of any priority, so that no holder stalls the model's fleet. When every job with
    work is held, wait for the first as long as any lock."""
    scoped = shape[1]
    if not scoped:  # the runner's own job has no other to take: it only waits
        session.execute(text(f"SET LOCAL lock_timeout = {HELD_WAIT_MS}"))
        try:
            with session.begin_nested():
                picked = session.execute(_pick_statement(True, *shape, skip=False), params).first()
        except DBAPIError as exc:
            # Any other error ends the transaction, and its SET LOCAL with it: raised as it
            # came, so that a lost connection stays an error the caller retries.
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            waited_out = True
        else:
            waited_out = False
        # The connection's own timeout again (set at connect: jobs.db.make_engine).
        session.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
        if not waited_out:
            return picked  # the held job, waited for; or None: no job has work at all
        log.info("a job of higher priority is held past %d ms: taking the next", HELD_WAIT_MS)
        picked = session.execute(
            _pick_statement(True, *shape, skip=True, strict=False), params
        ).first()
        if picked is not None:
            return picked
    return session.execute(_pick_statement(True, *shape, skip=False), params).first()


_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout


_DEFAULT_BATCH_SIZE = 8  # a job written before its params held one (jobs.kinds.KindParams)


def _batch_size_of(params: Any) -> int:
    size = (params or {}).get("batch_size") if isinstance(params, dict) else None
    return int(size) if isinstance(size, int) and size > 0 else _DEFAULT_BATCH_SIZE


@cache
def _pick_statement(
    postgres: bool, routed: bool, scoped: bool, *, skip: bool, strict: bool = True
) -> Update:
    """Takes the turn of the next job in priority and turn order: stamps ``turn_at`` and
    starts it, returning its id and params. ``skip``: past rows others hold (PostgreSQL), and
    with ``strict`` only to a job of the highest priority with work."""
    job_table: Table = Job.__table__  # type: ignore[assignment]
    jobs = job_table.c
    now: ColumnElement[datetime] = bindparam("p_now", type_=jobs.turn_at.type)
    inner = job_table.alias()
    pick = select(inner.c.id).where(
        inner.c.status.in_(OPEN_JOB_STATES),
        within_window(inner.c, now),
        has_claimable(inner.c.id, now),
    )
    if routed:
        pick = pick.where(inner.c.model == bindparam("p_model", type_=jobs.model.type))
    if scoped:
        pick = pick.where(inner.c.id == bindparam("p_job", type_=jobs.id.type))
    # The order of the index ix_jobs_open_turn read backwards (jobs.db), so the claim walks the
    # open jobs in turn and stops at the first with work.
    pick = pick.order_by(
        inner.c.priority.desc(), inner.c.turn_at, inner.c.created_at, inner.c.id
    ).limit(1)
    if skip and strict and not scoped:
        # Skipping a held row must not skip past a higher priority: only a job of the highest
        # priority with work may be taken (I13). Without this, a claim beside one holding the
        # urgent job's row took the running job's next batch instead.
        if routed:
            # That priority found once, by the same backward walk of ix_jobs_open_turn, so the
            # pick stops at the held row's priority instead of testing every job below it.
            pick = pick.where(inner.c.priority >= _top_priority_with_work(job_table, now))
        else:
            pick = pick.where(~higher_priority_has_work(inner.c, now))
    if postgres:
        pick = pick.with_for_update(skip_locked=skip)
    return (
        update(job_table)
        .where(jobs.id == pick.scalar_subquery(), jobs.status.in_(OPEN_JOB_STATES))
        .values(
            turn_at=now,
            status=case(
                (jobs.status == JobStatus.queued, JobStatus.in_progress), else_=jobs.status
            ),
            started_at=func.coalesce(jobs.started_at, now),
        )
        .returning(jobs.id, jobs.params, jobs.kind, jobs.prompt)
    )


def _top_priority_with_work(job_table: Table, now: ColumnElement[datetime]) -> Any:
    """The highest priority of the model's open jobs with a claimable item (NULL: none)."""
    top = job_table.alias()
    return (
        select(top.c.priority)
        .where(
            top.c.model == bindparam("p_model", type_=top.c.model.type),
            top.c.status.in_(OPEN_JOB_STATES),
            within_window(top.c, now),
            has_claimable(top.c.id, now),
        )
        .order_by(top.c.priority.desc())
        .limit(1)
        .scalar_subquery()
    )


@cache
def _next_items_statement(postgres: bool, *, routed: bool, wait: bool = False) -> Update:
    """Claims the picked job's next claimable items, by seq, up to its batch size; ``wait``
    (PostgreSQL): waits for rows someone holds instead of skipping them."""
    item_table: Table = Item.__table__  # type: ignore[assignment]
    items = item_table.c
    inner = item_table.alias()
    now: ColumnElement[datetime] = bindparam("c_now", type_=items.started_at.type)
    target = (
        select(inner.c.id)
        .where(inner.c.job_id == bindparam("c_job", type_=items.job_id.type))
        .where(claimable(inner.c, now))
        .order_by(inner.c.seq)
        .limit(bindparam("c_limit"))
    )
    if postgres:
        # Another claimer's items are its own: take the next ones instead of waiting. A CTE,
        # because PostgreSQL may run a LIMIT subquery of an UPDATE's WHERE more than once, and
        # take more than the limit; a CTE is run once.
        target = select(target.with_for_update(skip_locked=not wait).cte("next_items").c.id)
    return (
        update(item_table)
        .where(items.id.in_(target), items.status == ItemStatus.queued)
        .values(_claimed_values(items, now, routed=routed))
        .returning(
            items.id,
            items.job_id,
            items.seq,
            items.source,
            items.input_uri,
            items.prompt,
            items.attempts,
            items.transient_failures,
            items.request,
            items.reuse_key,
        )
    )


def _claimed_values(items: Any, now: ColumnElement[datetime], *, routed: bool) -> dict[str, Any]:
    """What a claim sets on each item it takes (named or by doorbell), from ``_lease_params``'
    bind parameters; routed, also what the worker serves."""
    values: dict[str, Any] = {
        "status": ItemStatus.running,
        "lease_token": bindparam("c_token", type_=items.lease_token.type),
        "lease_expires_at": bindparam("c_expires", type_=items.lease_expires_at.type),
        "attempts": items.attempts + 1,
        "worker": bindparam("c_worker", type_=items.worker.type),
        "started_at": now,
        "not_before": None,
    }
    if routed:
        values |= {
            "model": bindparam("c_model", type_=items.model.type),
            "model_revision": bindparam("c_revision", type_=items.model_revision.type),
            "quantization": bindparam("c_quantization", type_=items.quantization.type),
        }
    return values


def _lease_params(
    token: str, now: datetime, *, lease_seconds: int, worker: str, serving: Serving | None
) -> dict[str, Any]:
    """The bind parameters of ``_claimed_values``."""
    params: dict[str, Any] = {
        "c_now": now,
        "c_token": token,
        "c_expires": now + timedelta(seconds=lease_seconds),
        "c_worker": worker,
    }
    if serving is not None:
        params |= {
            "c_model": serving.model,
            "c_revision": serving.revision,
            "c_quantization": serving.quantization,
        }
    return params


def _claimed_rows() -> Select[Any]:
    return _claim_statements(False, routed=False)[1]


def _claimed_item(row: Any, token: str) -> ClaimedItem:
    return ClaimedItem(
        id=row.id,
        job_id=row.job_id,
        kind=row.kind,
        source=row.source,
        input_uri=row.input_uri,
        prompt=row.prompt if row.prompt is not None else (row.job_prompt or ""),
        attempts=row.attempts,
        lease_token=token,
        params=dict(row.params or {}),
        transient_failures=row.transient_failures,
        request=row.request,
        reuse_key=row.reuse_key,
    )


def lost_a_worker(session_factory: SessionFactory, item_ids: Sequence[str]) -> bool:
    """Whether any of these items, still queued, has been claimed before: its worker was lost
    (a hand-back refunds its attempt and a retry starts again from 0). Such an item may be what
    kills workers, so a worker runs its message alone (``workers.isolation``). A read: no lock."""
    with session_factory() as session:
        found = session.scalar(_LOST_A_WORKER, {"ids": list(item_ids)})
    return found is not None


_LOST_A_WORKER = (  # built once: asked for every message a worker with several slots takes
    select(Item.__table__.c.id)
    .where(
        Item.__table__.c.id.in_(bindparam("ids", expanding=True)),
        Item.__table__.c.status == ItemStatus.queued,
        Item.__table__.c.attempts > 0,
    )
    .limit(1)
)


def _start_jobs(session_factory: SessionFactory, job_ids: Iterable[str], *, now: datetime) -> None:
    # Its own transaction: a claim holding item locks never waits for a job row (cancel takes
    # the job row first, then items; the two orders would deadlock).
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(sorted(job_ids)), Job.status == JobStatus.queued)
            .values(status=JobStatus.in_progress, started_at=now)
            .execution_options(synchronize_session=False)
        )


def renew_lease(
    session_factory: SessionFactory,
    lease_token: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> int:
    """Extends the lease of items still running under ``lease_token``; returns how many."""
    now = now or utcnow()
    with session_factory.begin() as session:
        result = session.execute(
            update(Item)
            .where(Item.lease_token == lease_token, Item.status == ItemStatus.running)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def _back_to_the_queue(closing: ColumnElement[bool], now: datetime) -> dict[str, Any]:
    """A hand-back: running → queued with the attempt refunded (the item did nothing wrong),
    or ``cancelled`` when its job is closing; no lease, no message."""
    return {
        "status": case((closing, ItemStatus.cancelled), else_=ItemStatus.queued),
        "finished_at": case((closing, now), else_=null()),
        "lease_token": None,
        "lease_expires_at": None,
        "dispatched_at": None,
        "attempts": Item.attempts - 1,
    }


def release_items(
    session_factory: SessionFactory,
    claimed: Iterable[ClaimedItem],
    *,
    retry_base_seconds: float = 5,
    retry_max_seconds: float = 300,
    now: datetime | None = None,
) -> int:
    """Hands items back after a transient failure (storage down, throttled), under their lease.

    The item waits ``base * 2^n`` seconds (capped) before it can be claimed again, and the
    attempt is refunded: a blip is not the item's fault. ``transient_failures`` counts the
    hand-backs; the worker fails the item once it reaches its limit. An item of a job being
    cancelled ends ``cancelled`` instead.
    """
    now = now or utcnow()
    released = 0
    job_ids: set[str] = set()
    closing = job_of_item_is(*CLOSING_JOB_STATES)
    with session_factory.begin() as session:
        for item in claimed:
            delay = min(
                retry_base_seconds * 2 ** min(item.transient_failures, 30), retry_max_seconds
            )
            row = session.execute(
                update(Item)
                .where(
                    Item.id == item.id,
                    Item.lease_token == item.lease_token,
                    Item.status == ItemStatus.running,
                )
                .values(
                    **_back_to_the_queue(closing, now),
                    transient_failures=Item.transient_failures + 1,
                    not_before=now + timedelta(seconds=delay),
                )
                .returning(Item.job_id)
                .execution_options(synchronize_session=False)
            ).first()
            if row is not None:
                released += 1
                job_ids.add(row.job_id)
    finalise_jobs(session_factory, job_ids, now=now)
    return released


def hand_back_claims(
    session_factory: SessionFactory, job_id: str, *, worker: str, now: datetime | None = None
) -> int:
    """Hands back at once what ``worker`` still holds of a job it stops working on (an
    interrupted ``llava-batch run``): running → queued with the attempt refunded and no backoff
    (the item did nothing wrong), or ``cancelled`` when the job is being cancelled.

    Guarded by state and worker: an item whose lease another worker has taken since (the
    sweeper re-queued it, another claim stamped its own name) is not touched. Returns how many.
    """
    now = now or utcnow()
    closing = job_of_item_is(*CLOSING_JOB_STATES)
    with session_factory.begin() as session:
        rows = session.execute(
            update(Item)
            .where(
                Item.job_id == job_id,
                Item.status == ItemStatus.running,
                Item.worker == worker,
            )
            .values(**_back_to_the_queue(closing, now))
            .returning(Item.id)
            .execution_options(synchronize_session=False)
        ).all()
    if rows:
        log.info("handed back job=%s worker=%s items=%d", job_id, worker, len(rows))
        finalise_jobs(session_factory, {job_id}, now=now)
    return len(rows)
