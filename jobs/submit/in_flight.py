"""A submit's registration in ``submits_in_flight``: what keeps blob collection from deleting a
stored input that the submit found already stored and is about to reference.

A producer registers (and commits) before it stores anything, and removes its row when it ends.
Every transaction that writes its item rows first confirms the registration is still live, with
an UPDATE that renews it; the collector deletes nothing while a live one exists, and removes
expired ones in the transaction in which it decides to go ahead. So a submit either was seen
(the collector deferred), or registered after the collector's deletes (its uploads store the
bytes again), or finds its row gone or expired and fails with ``submit_stalled``, writing
nothing. See docs/design.md#collecting-stored-inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from jobs.db import (
    SessionFactory,
    SubmitInFlight,
    commit_without_flush,
    is_retryable,
    new_id,
    utcnow,
)
from jobs.errors import RequestError

log = logging.getLogger(__name__)

# How long a registration lives unrenewed: LLAVA_BATCH_SUBMIT_IN_FLIGHT_SECONDS's default. Each
# commit of item rows renews it, and a big submit's heartbeat too; a small submit has this long
# to store its inputs. Long, because a submit that outlives it fails, and one that died (its
# row left behind) only delays collection until it expires.
IN_FLIGHT_LEASE = timedelta(hours=1)
SUBMIT_STALLED = "submit_stalled"
# Registering waits behind a collector's pass (PostgreSQL: its table lock, under
# lock_timeout): a pass is short, so a wait that timed out is tried again.
_REGISTER_TRIES = 3


class InFlight:
    """One submit's registration; ``in_flight`` makes and ends it."""

    def __init__(self, session_factory: SessionFactory, lease: timedelta) -> None:
        self._session_factory = session_factory
        self.lease = lease
        self.id = new_id()

    def register(self) -> None:
        for attempt in range(_REGISTER_TRIES):
            try:
                with self._session_factory.begin() as session:
                    # Visible at once, which is all the collector needs; a database crash
                    # that took it back also ends this submit's connection.
                    commit_without_flush(session)
                    now = utcnow()
                    until = now + self.lease
                    session.add(SubmitInFlight(id=self.id, started_at=now, lease_expires_at=until))
                return
            except Exception as exc:
                if attempt + 1 == _REGISTER_TRIES or not is_retryable(exc):
                    raise

    def confirm(self, session: Session) -> None:
        """The first statement of a transaction that writes item rows: renews the registration,
        and raises ``submit_stalled`` (the caller's transaction then rolls back) if it expired
        or the collector removed it, since a collection may have deleted what this submit found
        already stored. It holds the row (PostgreSQL) or the write lock (SQLite) until commit,
        so no collection starts before these rows are visible to it."""
        if not self._renew(session):
            raise RequestError(
                f"This submit was stalled for longer than its {self.lease} registration "
                "(LLAVA_BATCH_SUBMIT_IN_FLIGHT_SECONDS), so an input it stored may have been "
                "collected meanwhile; nothing more was written: submit it again.",
                code=SUBMIT_STALLED,
            )

    def renew(self) -> bool:
        """A heartbeat's renewal, in a transaction of its own; False if it had already expired
        (then only ``confirm`` can tell the submit, which fails at its next commit)."""
        with self._session_factory.begin() as session:
            return self._renew(session)

    def _renew(self, session: Session) -> bool:
        now = utcnow()
        renewed = session.execute(
            update(SubmitInFlight)
            .where(SubmitInFlight.id == self.id, SubmitInFlight.lease_expires_at > now)
            .values(lease_expires_at=now + self.lease)
            .execution_options(synchronize_session=False)
        )
        return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    def end(self) -> None:
        try:
            with self._session_factory.begin() as session:
                commit_without_flush(session)  # one taken back only expires later
                session.execute(delete(SubmitInFlight).where(SubmitInFlight.id == self.id))
        except Exception as exc:  # it expires by itself; collection waits until then
            log.warning("could not remove submit registration %s: %s", self.id, exc)


@contextmanager
def in_flight(session_factory: SessionFactory, lease: timedelta) -> Iterator[InFlight]:
    """Registered (committed) on entry, before anything is stored; removed on exit, whether
    the submit succeeded or failed. A producer that dies leaves its row to expire."""
    flight = InFlight(session_factory, lease)
    flight.register()
    try:
        yield flight
    finally:
        flight.end()
