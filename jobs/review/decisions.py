"""What a reviewer changes: a decision on items (by id, or over a filtered view), an edit of
an item's result, or neither again. The model's result in ``items`` is never touched; a
review is one ``reviews`` row per item, written by an upsert so two reviewers at once never
collide on the insert (the later one wins)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, String, and_, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import Item, Job, Review, SessionFactory, UTCDateTime, among, utcnow
from jobs.errors import ItemNotFoundError, RequestError
from jobs.hooks import reached
from jobs.review.filters import conditions, live_job, review_state
from jobs.review.types import (
    APPROVED,
    DECISIONS,
    MAX_EDIT_CHARS,
    MAX_REVIEWER_CHARS,
    UNREVIEWED,
    ItemFilter,
)
from jobs.states import JobStatus

CHUNK = 500
# A bulk decision's items per transaction (seqs of the job in a row, whatever the filter).
BULK_CHUNK = 1000


def decide(
    session_factory: SessionFactory, item_ids: Sequence[str], decision: str, reviewer: str
) -> int:
    """Approves or rejects these items; returns how many changed (one already so is not). An
    edit already made is kept. An unknown id refuses them all: nothing is changed."""
    _check_decision(decision)
    _check_reviewer(reviewer)
    wanted = list(dict.fromkeys(item_ids))
    now = utcnow()
    changed = 0
    with _items_may_go(), session_factory.begin() as session:
        for start in range(0, len(wanted), CHUNK):
            ids = wanted[start : start + CHUNK]
            found = {
                row.id: row.job_id
                for row in session.execute(
                    select(Item.id, Item.job_id)
                    .join(Job, Job.id == Item.job_id)
                    .where(among(session, Item.id, ids), Job.status != JobStatus.deleting)
                )
            }
            missing = [i for i in ids if i not in found]
            if missing:
                raise ItemNotFoundError(f"No item {missing[0]!r}: nothing was changed.")
            rows = [
                {
                    "item_id": i,
                    "job_id": found[i],
                    "decision": decision,
                    "reviewer": reviewer,
                    "decided_at": now,
                }
                for i in ids
            ]
            reached("review:checked")
            changed += _upsert_decisions(session, _insert(session).values(rows))
    return changed


def decide_filtered(
    session_factory: SessionFactory, job_id: str, flt: ItemFilter, decision: str, reviewer: str
) -> int:
    """Approves or rejects exactly the items ``list_items(job_id, flt)`` counts (all its
    pages, not just one); returns how many changed. The job is walked by seq in windows of
    ``BULK_CHUNK`` items, one transaction each, so none holds more than a window's rows
    whatever the job's size; only the ids of one window are read into this process. Stopped
    half-way and run again, it decides the rest (an item already so is not counted). An item
    decided by someone else meanwhile keeps that decision if it has left the view
    (``_upsert_decisions``' ``still``); otherwise the later decision wins, as for two
    single ones."""
    _check_decision(decision)
    _check_reviewer(reviewer)
    flt = flt.checked()
    now = utcnow()
    changed = 0
    after: int | None = None
    while True:
        with _items_may_go(), session_factory.begin() as session:
            live_job(session, job_id)
            end = _window_end(session, job_id, after)
            ids = _chosen(session, job_id, flt, decision, after, end)
            if ids:
                rows = select(
                    Item.id,
                    Item.job_id,
                    literal(decision, String(16)),
                    literal(reviewer, String(MAX_REVIEWER_CHARS)),
                    literal(now, UTCDateTime()),
                ).where(among(session, Item.id, ids))
                insert = _insert(session).from_select(
                    ["item_id", "job_id", "decision", "reviewer", "decided_at"], rows
                )
                changed += _upsert_decisions(session, insert, still=_still_in_view(flt))
        reached("review:bulk_window")
        if end is None:
            return changed
        after = end


def _chosen(
    session: Session,
    job_id: str,
    flt: ItemFilter,
    decision: str,
    after: int | None,
    end: int | None,
) -> list[str]:
    """The ids of the items with ``after < seq <= end`` in the view of ``flt`` that are not
    ``decision`` already. The items' own conditions in SQL; their reviews read by the ids (the
    primary key) and the review state tested here: as (NOT) EXISTS in the same statement,
    PostgreSQL hashed all of the reviews table for every window (80 ms a window at 100k
    reviews, growing as the bulk decision wrote more)."""
    window = [] if after is None else [Item.seq > after]
    if end is not None:
        window.append(Item.seq <= end)
    own = conditions(job_id, replace(flt, review=None))
    ids = list(session.scalars(select(Item.id).where(*own, *window)))
    if not ids:
        return []
    reviews = select(Review.item_id, Review.decision).where(among(session, Review.item_id, ids))
    decided = {item_id: found for item_id, found in session.execute(reviews)}
    return [
        i
        for i in ids
        if decided.get(i) != decision
        and (flt.review is None or review_state(decided.get(i)) == flt.review)
    ]


def _window_end(session: Session, job_id: str, after: int | None) -> int | None:
    """The seq of the ``BULK_CHUNK``-th item of the job after seq ``after`` (None: from the
    start), by the (job_id, seq) index; None when fewer are left (the last window)."""
    query = select(Item.seq).where(Item.job_id == job_id)
    if after is not None:
        query = query.where(Item.seq > after)
    found = query.order_by(Item.seq).offset(BULK_CHUNK - 1).limit(1)
    return session.scalar(found)


def _still_in_view(flt: ItemFilter) -> ColumnElement[bool] | None:
    """What an item's review must still hold, when the bulk decision writes over it, for the
    item to be in a view filtered by review state: a decision someone made after the view
    was read (between its SELECT and its write) takes the item out, and is kept."""
    if flt.review is None:
        return None
    if flt.review == UNREVIEWED:
        return Review.decision.is_(None)
    return Review.decision == flt.review


def edit(
    session_factory: SessionFactory,
    item_id: str,
    edited: str,
    reviewer: str,
    *,
    decision: str | None = APPROVED,
) -> None:
    """Keeps ``edited`` as the item's corrected result beside the model's own. An item whose
    result is JSON (extract, ask, a chat with a response format) takes JSON, and an extract's
    must validate against its job's schema; any other takes text. An edit approves the item,
    unless ``decision`` says otherwise (None: its decision stays as it was)."""
    if decision is not None:
        _check_decision(decision)
    _check_reviewer(reviewer)
    if len(edited) > MAX_EDIT_CHARS:
        raise RequestError(
            f"An edit has at most {MAX_EDIT_CHARS:,} characters.", code="review_edit_invalid"
        )
    with _items_may_go(), session_factory.begin() as session:
        item, job = _live_item(session, item_id)
        text, obj = _parse_edit(job, item, edited)
        reached("review:checked")
        values: dict[str, Any] = {
            "item_id": item.id,
            "job_id": job.id,
            "decision": decision,
            "edited_text": text,
            "edited_json": obj,
            "reviewer": reviewer,
            "decided_at": utcnow(),
        }
        insert = _insert(session).values(values)
        changes = ["edited_text", "edited_json", "reviewer", "decided_at"]
        if decision is not None:
            changes.append("decision")
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[Review.item_id],
                set_={name: getattr(insert.excluded, name) for name in changes},
            )
        )


def clear(session_factory: SessionFactory, item_id: str) -> None:
    """Takes the item back to unreviewed: its decision and its edit go."""
    with session_factory.begin() as session:
        _live_item(session, item_id)
        session.execute(delete(Review).where(Review.item_id == item_id))


def _parse_edit(job: Job, item: Item, edited: str) -> tuple[str | None, Any | None]:
    """(text, None) for a text result; (None, object) for a JSON one, checked against the
    schema the model's answer was held to: an extract's job's, a chat item's own request's
    (a chat job's lines each give theirs), whether that answer passed it or not."""
    params = job.params or {}
    schema = params.get("schema") if job.kind == "extract" else (item.request or {}).get("schema")
    if schema is None and item.result_json is None and job.kind not in ("extract", "ask"):
        return edited, None
    try:
        obj = json.loads(edited)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"The edit is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            code="review_edit_invalid",
        ) from exc
    if schema is not None:
        import jsonschema  # the page and the CLI's start need it not: only an edit

        from model.schema import validate_output

        try:
            validate_output(schema, obj)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
            raise RequestError(
                f"The edit does not match its schema at {where}: {exc.message}.",
                code="review_edit_invalid",
            ) from exc
    if job.kind == "ask" and not (
        isinstance(obj, list) and all(isinstance(entry, dict) for entry in obj)
    ):
        raise RequestError(
            "An ask edit is a JSON list of answers (objects), as its result is.",
            code="review_edit_invalid",
        )
    return None, obj


@contextmanager
def _items_may_go() -> Iterator[None]:
    """An item checked a moment ago may be deleted (its job's deletion) before its review is
    written: the foreign key refuses the write, and the reviewer is told it is gone."""
    try:
        yield
    except IntegrityError as exc:
        raise ItemNotFoundError(
            "The item was deleted (its job is being deleted): nothing was changed."
        ) from exc


def _live_item(session: Session, item_id: str) -> tuple[Item, Job]:
    found = session.execute(
        select(Item, Job).join(Job, Job.id == Item.job_id).where(Item.id == item_id)
    ).first()
    if found is None or found.Job.status == JobStatus.deleting:
        raise ItemNotFoundError(f"No item {item_id!r}.")
    return found.Item, found.Job


def _upsert_decisions(
    session: Session, insert: Any, *, still: ColumnElement[bool] | None = None
) -> int:
    """Writes the decisions ``insert`` holds (rows, or a SELECT) over those already there, an
    edit kept; returns how many changed. ``still``: what an existing review must hold to be
    written over."""
    # An item already so decided is left as it was, and not counted as changed.
    write_over = Review.decision.is_distinct_from(insert.excluded.decision)
    statement = insert.on_conflict_do_update(
        index_elements=[Review.item_id],
        set_={
            "decision": insert.excluded.decision,
            "reviewer": insert.excluded.reviewer,
            "decided_at": insert.excluded.decided_at,
        },
        where=write_over if still is None else and_(write_over, still),
    )
    result = session.execute(statement.execution_options(preserve_rowcount=True))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(Review)


def _check_decision(decision: str) -> None:
    if decision not in DECISIONS:
        raise RequestError(
            f"A decision is {' or '.join(DECISIONS)}, not {decision!r}.",
            code="review_decision_invalid",
        )


def _check_reviewer(reviewer: str) -> None:
    if not reviewer.strip() or len(reviewer) > MAX_REVIEWER_CHARS:
        raise RequestError(
            f"A reviewer is named by 1 to {MAX_REVIEWER_CHARS} characters.",
            code="review_reviewer_invalid",
        )
