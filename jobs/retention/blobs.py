"""Collecting stored inputs: a content-addressed input (``Blobs.put_content_addressed``) is
shared by every job that stored the same bytes, so deleting a job's items only makes the inputs
they referenced *candidates* (``queue_inputs_of``). ``collect_blobs`` deletes a candidate's
object once no item references it, and only while no submit is in flight.

Why that is safe (docs/design.md#collecting-stored-inputs): a submit registers in
``submits_in_flight`` before it stores anything, and confirms (renews) its registration in
every transaction that writes its item rows. A pass of the collector takes, first, a lock that
conflicts with registering and confirming (PostgreSQL: SHARE ROW EXCLUSIVE on the table;
SQLite: the one write lock), and holds it until it commits, its objects deleted meanwhile. So a
submit's registration is either committed before the pass (live: the pass defers; expired: the
pass removes it, and the submit's confirmation then fails, writing nothing), or after it, when
the deleted objects are gone and its uploads store them again. Its rows are either committed
before the pass, and then the pass sees that they reference the candidate, or after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, insert, literal, or_, select, text
from sqlalchemy.orm import Session

from jobs.db import (
    BlobCandidate,
    Item,
    ItemInput,
    SessionFactory,
    SubmitInFlight,
    UTCDateTime,
    among,
    utcnow,
)
from jobs.hooks import reached
from storage import Blobs

log = logging.getLogger(__name__)

# Candidates one pass's transaction looks at: their objects are deleted while it holds the lock
# that submits wait behind (one S3 DeleteObjects request), so it stays short.
COLLECT_LIMIT = 1000


@dataclass(frozen=True)
class Collected:
    """What collection did; ``deferred``: a submit was in flight, so nothing was looked at."""

    deleted: int = 0  # objects deleted, their candidates removed
    still_referenced: int = 0  # candidates an item references again: dropped, object kept
    foreign: int = 0  # candidates outside our input store: dropped, never deleted
    expired_submits: int = 0  # registrations whose lease ran out, removed
    deferred: bool = False
    out_of_time: bool = False  # stopped at its deadline: candidates may be left

    def __add__(self, other: Collected) -> Collected:
        return Collected(
            self.deleted + other.deleted,
            self.still_referenced + other.still_referenced,
            self.foreign + other.foreign,
            self.expired_submits + other.expired_submits,
            self.deferred or other.deferred,
            self.out_of_time or other.out_of_time,
        )


def queue_inputs_of(
    session: Session, items: Sequence[ColumnElement[bool]], *, now: datetime | None = None
) -> int:
    """Queues, in the caller's transaction (the one that deletes the items), the stored inputs
    of the items that match ``items`` (the deleting step's seq range) for collection, in one
    INSERT … SELECT: a 1,000-item step reads no row into this process. An input without a
    sha256 names a user's object, never ours to delete. Each distinct input is queued once per
    call, and always as a new row, even one already queued: a pass that read the older row and
    found the input referenced (by the items deleted here, not yet committed) drops that row,
    and this one is looked at once those items are gone. Returns how many it queued."""
    firsts = select(Item.input_uri.label("uri"), Item.input_sha256.label("sha256")).where(
        *items, Item.input_sha256.is_not(None)
    )
    # The other images of a request of several (``item_inputs``), of the same items.
    others = (
        select(ItemInput.uri, ItemInput.sha256)
        .join(Item, Item.id == ItemInput.item_id)
        .where(*items, ItemInput.sha256.is_not(None))
    )
    both = firsts.union(others).subquery()  # UNION: each (uri, sha256) once
    uses = select(both.c.uri, both.c.sha256, literal(now or utcnow(), UTCDateTime()))
    queued = session.execute(
        insert(BlobCandidate)
        .from_select(["uri", "sha256", "queued_at"], uses)
        # An INSERT's row count is kept only when asked for (psycopg's would read -1).
        .execution_options(preserve_rowcount=True)
    )
    return int(queued.rowcount)  # type: ignore[attr-defined]


def collect_blobs(
    session_factory: SessionFactory,
    blobs: Blobs,
    *,
    now: datetime | None = None,
    limit: int = COLLECT_LIMIT,
    deadline: float | None = None,
) -> Collected:
    """Collects queued candidates, ``limit`` per transaction, until the queue is empty or a
    submit is in flight (or ``time.monotonic()`` passes ``deadline``). A pass that fails
    (storage, a lock wait) leaves its candidates queued and raises: the next call deletes again
    what it may have deleted (a missing object is no error)."""
    now = now or utcnow()
    total = Collected()
    after: int | None = None
    while True:
        done, taken, after = _collect_batch(session_factory, blobs, now, limit, after)
        total += done
        if done.deferred or taken < limit:
            return total
        if deadline is not None and time.monotonic() >= deadline:
            return total + Collected(out_of_time=True)


def _collect_batch(
    session_factory: SessionFactory,
    blobs: Blobs,
    now: datetime,
    limit: int,
    after: int | None,
) -> tuple[Collected, int, int | None]:
    """One batch, from where the last one stopped (``after``): on PostgreSQL a queue read from
    its start walks the dead index entries of every candidate deleted before the next vacuum,
    so a million candidates would cost a quadratic walk."""
    with session_factory.begin() as session:
        expired = _lock_out_submits(session, now)
        if session.scalar(select(SubmitInFlight.id).limit(1)) is not None:
            return Collected(expired_submits=expired, deferred=True), 0, after
        query = select(BlobCandidate.id, BlobCandidate.uri, BlobCandidate.sha256)
        if after is not None:
            query = query.where(BlobCandidate.id > after)
        taken = session.execute(query.order_by(BlobCandidate.id).limit(limit)).all()
        referenced = _still_referenced(session, [row.id for row in taken])
        unreferenced = [row.uri for row in taken if row.sha256 not in referenced]
        ours = [uri for uri in unreferenced if blobs.holds(uri)]
        foreign = len(unreferenced) - len(ours)
        if foreign:
            log.warning("%d blob candidate(s) outside the input store: dropped", foreign)
        blobs.delete_stored(ours)  # under the lock: no submit can find them meanwhile
        reached("collect:deleted")
        _drop_candidates(session, [row.id for row in taken])
    if ours:  # every sweeper pass collects: only what it deleted is worth a line
        log.info("collected %d stored input(s)", len(ours))
    done = Collected(
        deleted=len(ours),
        still_referenced=len(taken) - len(unreferenced),
        foreign=foreign,
        expired_submits=expired,
    )
    return done, len(taken), taken[-1].id if taken else after


def _lock_out_submits(session: Session, now: datetime) -> int:
    """Takes, for the rest of the transaction, the lock that registering or confirming a
    submit waits behind, and removes the registrations that expired. Removed, not just
    ignored: a stalled submit's confirmation then finds no row whatever its clock says."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE submits_in_flight IN SHARE ROW EXCLUSIVE MODE"))
    # On SQLite this DELETE, the transaction's first statement, takes the write lock even when
    # it deletes nothing; reading first would leave it on a snapshot a writer could outdate.
    expired = session.execute(
        delete(SubmitInFlight)
        .where(SubmitInFlight.lease_expires_at <= now)
        .execution_options(synchronize_session=False)
    )
    return int(expired.rowcount)  # type: ignore[attr-defined]


def _still_referenced(session: Session, ids: list[int]) -> set[str]:
    """The sha256 of those candidates some item references, as its first input or another
    (``item_inputs``): an index probe each (ix_items_input_sha256, ix_item_inputs_sha256) that
    stops at the first row. By content, not URI: the same bytes under another suffix keep the
    candidate too (kept, never lost)."""
    if not ids:
        return set()
    first = select(Item.id).where(Item.input_sha256 == BlobCandidate.sha256).exists()
    other = select(ItemInput.item_id).where(ItemInput.sha256 == BlobCandidate.sha256).exists()
    taken = among(session, BlobCandidate.id, ids)
    return set(session.scalars(select(BlobCandidate.sha256).where(taken, or_(first, other))))


def _drop_candidates(session: Session, ids: list[int]) -> None:
    # Only the rows read: one queued again meanwhile (queue_inputs_of) is a new row, kept.
    if ids:
        session.execute(
            delete(BlobCandidate)
            .where(among(session, BlobCandidate.id, ids))
            .execution_options(synchronize_session=False)
        )
