"""A schedule's memory of what it processed (``schedule_objects``): one (key, version) row per
input it turned into an item, read and forgotten in bounded steps, so a firing costs what the
source holds now, never what it held over the schedule's life.

A firing asks only about the keys it listed, ``PAGE_KEYS`` at a time, through the unique
(schedule, key, version) index. Each firing with a full, non-empty listing then walks at most
``PRUNE_ROWS`` of the schedule's rows in key order from ``schedules.history_cursor`` and
deletes those whose (key, version) the listing does not hold: the object left the source, or
a newer version replaced it. The next firing goes on from there, and the walk starts again
from the first key once it runs off the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TypeVar

from sqlalchemy import Row, delete, select, update
from sqlalchemy.orm import Session

from jobs.db import Schedule, ScheduleObject, SessionFactory, among
from storage import ObjectInfo

log = logging.getLogger(__name__)

# Keys named in one lookup: well under SQLite's 32,766 bound parameters, and one index range
# scan per key on either database. PostgreSQL gets them as one array parameter, so a page
# there is only what one reply holds: a 1,000-file listing is one round trip, not three.
PAGE_KEYS = 500
PAGE_KEYS_POSTGRES = 5000
# Rows one firing walks, whatever the history's length: 500 keeps a firing that deletes them
# all (a source that dropped many objects) within its 50 ms (docs/benchmarks.md), and still
# forgets 48,000 gone objects a day at a 15-minute period.
PRUNE_ROWS = 500

T = TypeVar("T")
_Row = Row[str, str, str]  # id, key, etag


def not_seen(
    session_factory: SessionFactory, schedule_id: str, listed: Sequence[ObjectInfo]
) -> list[ObjectInfo]:
    """The listed objects whose (key, version) the schedule has not processed, in listing
    order. Reads the history of the listed keys only: what it holds is the size of the
    listing (times the few versions of a key not pruned yet), not of the history."""
    new: list[ObjectInfo] = []
    with session_factory() as session:
        for page in _pages(listed, _page_size(session)):
            keys = among(session, ScheduleObject.key, sorted({o.key for o in page}))
            # Plain tuples: a Row in a set is compared through its slower __eq__.
            rows = session.execute(
                select(ScheduleObject.key, ScheduleObject.etag).where(
                    ScheduleObject.schedule_id == schedule_id, keys
                )
            )
            seen = {(key, etag) for key, etag in rows}
            new += [o for o in page if (o.key, o.etag) not in seen]
    return new


def prune_history(
    session: Session,
    schedule_id: str,
    listed: Sequence[ObjectInfo],
    *,
    cursor: str | None,
    limit: int | None = None,
) -> int:
    """One step of forgetting: deletes, among the next ``limit`` (``PRUNE_ROWS``) rows from the
    cursor, those ``listed`` does not hold, and moves the cursor on; returns how many.

    ``listed``: the firing's full listing of the source; ``cursor``: the schedule's
    ``history_cursor``, as the claim read it. ``session``: the transaction of the
    firing's claim, which holds the schedule's row (SQLite: the database) until the deletes
    commit. So an overlapping firing claims after it and lists after it, and one that claimed
    before it never comes after it: no listing older than another firing's record forgets
    that record. An empty listing forgets nothing: an unmounted share or a prefix emptied by
    mistake looks just like one, and forgetting would process everything again once it is
    back."""
    if not listed:
        return 0
    limit = PRUNE_ROWS if limit is None else limit
    current = {(o.key, o.etag) for o in listed}
    query = select(ScheduleObject.id, ScheduleObject.key, ScheduleObject.etag).where(
        ScheduleObject.schedule_id == schedule_id
    )
    if cursor is not None:
        query = query.where(ScheduleObject.key > cursor)
    # One row past the step tells whether the step ends inside a key.
    rows = session.execute(
        query.order_by(ScheduleObject.key, ScheduleObject.etag).limit(limit + 1)
    ).all()
    walked, next_cursor = _step(rows, limit)
    stale = [row.id for row in walked if (row.key, row.etag) not in current]
    for page in _pages(stale, _page_size(session)):
        session.execute(
            delete(ScheduleObject)
            .where(among(session, ScheduleObject.id, page))
            .execution_options(synchronize_session=False)
        )
    session.execute(
        update(Schedule).where(Schedule.id == schedule_id).values(history_cursor=next_cursor)
    )
    if stale:
        log.info("schedule %s: forgot %d objects no longer in its source", schedule_id, len(stale))
    return len(stale)


def _step(rows: Sequence[_Row], limit: int) -> tuple[Sequence[_Row], str | None]:
    """The rows a step walks and the cursor after it: None when the walk ran off the end. The
    cursor is a key and the next step starts after it, so a step never ends inside a key (its
    other versions would wait a whole lap): a key cut off by ``limit`` is left to the next
    step, unless it fills the step on its own."""
    if len(rows) <= limit:
        return rows, None
    walked = rows[:limit]
    last = walked[-1].key
    if rows[limit].key == last:
        whole = [row for row in walked if row.key != last]
        if whole:
            walked = whole
    return walked, walked[-1].key


def _page_size(session: Session) -> int:
    return PAGE_KEYS_POSTGRES if session.get_bind().dialect.name == "postgresql" else PAGE_KEYS


def _pages(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
