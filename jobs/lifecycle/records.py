"""Record: a batch's outcomes written under their lease; a row that cannot be stored fails
only its own item."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    update,
)
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

from jobs.db import Item, ItemPage, SessionFactory, commit_without_flush, is_retryable, utcnow
from jobs.errors import ItemErrorCode
from jobs.hooks import reached
from jobs.lifecycle.finalise import finalise_jobs, jobs_ready_to_finalise
from jobs.outcome import ItemOutcome, Outcome
from jobs.states import ItemStatus
from jobs.storable import storable_json, storable_text

log = logging.getLogger(__name__)


# --- record -------------------------------------------------------------------------------------

# Errors of one row's content (a value the database or its driver refuses, a failed
# constraint); an error about the connection or a lock (``is_retryable``) is the caller's to retry.
_ROW_ERRORS = (DBAPIError, StatementError, ValueError, TypeError)


def record_results(
    session_factory: SessionFactory, outcomes: Sequence[ItemOutcome], *, now: datetime | None = None
) -> int:
    """Writes outcomes, each only under its own lease token; returns how many were written.

    All in one transaction; if a row's content is refused, each outcome is written alone and the
    refused one is recorded as ``internal_error`` with the reason, so its batch-mates keep their
    results. Then each touched job is finalised in a short transaction of its own.
    """
    now = now or utcnow()
    if not outcomes:
        return 0
    try:
        try:
            with session_factory.begin() as session:
                _write_all(session, outcomes, now)
                # A batch's results are recorded without waiting for the disk: the flush was
                # most of a record's time, and a database crash that took the results back
                # leaves their items running under a lease, which the sweeper runs again.
                # After the write, not before: a transaction whose last statement was an
                # executemany (psycopg's pipeline) is not ended by PostgreSQL's
                # idle-in-transaction timeout, so a worker paused here would hold its rows.
                commit_without_flush(session)
                reached("record:written")
            written: list[bool] | None = None  # all of them
        except _LeaseLost:  # rolled back: written row by row, so the others keep their results
            with session_factory.begin() as session:
                written = [_write_outcome(session, outcome, now) for outcome in outcomes]
                reached("record:written")
    except _ROW_ERRORS as exc:
        if is_retryable(exc):
            raise
        log.warning("a result could not be stored; writing the batch row by row: %s", exc)
        written = [_write_alone(session_factory, outcome, now) for outcome in outcomes]
    reached("record:committed")  # committed: a test loses the COMMIT's reply here
    try:
        # A read first: while a job has work left (nearly always) no write and no second
        # commit. Run after our commit, so of two batches finishing a job at once, the later
        # one's probe sees both. The jobs are found from the items, refused ones included: a
        # row whose lease is gone may have been written by this batch's earlier try whose
        # COMMIT reply was lost (the caller retries), and the retry finalises what it finished.
        items = [outcome.item_id for outcome in outcomes]
        done = jobs_ready_to_finalise(session_factory, of_items=items)
        finalise_jobs(session_factory, done, now=now)
    except DBAPIError as exc:  # the sweeper finalises it on its next pass
        log.warning("finalising after a record failed (the sweeper will): %s", exc.orig)
    return len(outcomes) if written is None else sum(written)


class _LeaseLost(Exception):
    """An outcome's lease is gone (expired and taken, or cancelled): write row by row."""


def _build_record_statement() -> Any:
    # Built once: recording is the hot path, and a prebuilt Core statement with bind
    # parameters skips most of the per-call statement building.
    table: Table = Item.__table__  # type: ignore[assignment]
    items = table.c
    return (
        update(table)
        .where(
            items.id == bindparam("b_id"),
            items.lease_token == bindparam("b_token"),
            items.status == ItemStatus.running,
        )
        .values(
            status=bindparam("b_status", type_=items.status.type),
            result_text=bindparam("b_text", type_=items.result_text.type),
            result_json=bindparam("b_json", type_=items.result_json.type),
            tokens_out=bindparam("b_tokens", type_=items.tokens_out.type),
            completion_tokens=bindparam("b_tokens", type_=items.completion_tokens.type),
            prompt_tokens=bindparam("b_prompt_tokens", type_=items.prompt_tokens.type),
            finish_reason=bindparam("b_finish", type_=items.finish_reason.type),
            error_code=bindparam("b_code", type_=items.error_code.type),
            error_message=bindparam("b_message", type_=items.error_message.type),
            finished_at=bindparam("b_now", type_=items.finished_at.type),
            lease_token=None,
            lease_expires_at=None,
        )
    )


_RECORD_MANY = _build_record_statement()
_RECORD = _RECORD_MANY.returning(Item.__table__.c.job_id)


def _write_all(session: Session, outcomes: Sequence[ItemOutcome], now: datetime) -> None:
    """Writes every outcome in one statement (one round trip); ``_LeaseLost`` when a lease is
    gone, to find out which row by row."""
    result = session.execute(_RECORD_MANY, [_record_params(outcome, now) for outcome in outcomes])
    if result.rowcount != len(outcomes):  # type: ignore[attr-defined]
        raise _LeaseLost
    for outcome in outcomes:
        if outcome.outcome.pages:
            _write_pages(session, outcome)


def _record_params(outcome: ItemOutcome, now: datetime) -> dict[str, Any]:
    result = outcome.outcome
    return {
        "b_id": outcome.item_id,
        "b_token": outcome.lease_token,
        "b_status": ItemStatus.failed if result.failed else ItemStatus.succeeded,
        "b_text": storable_text(result.text),
        "b_json": storable_json(result.json),
        "b_tokens": result.tokens_out,
        "b_prompt_tokens": result.tokens_in,
        "b_finish": None if result.failed else ("stop" if result.finished else "length"),
        "b_code": result.error_code,
        "b_message": storable_text(result.error_message),
        "b_now": now,
    }


def _write_pages(session: Session, outcome: ItemOutcome) -> None:
    # Pages belong to this attempt only: whatever an earlier attempt left goes.
    session.execute(delete(ItemPage).where(ItemPage.item_id == outcome.item_id))
    session.add_all(_page_rows(outcome))
    session.flush()


def _write_outcome(session: Session, outcome: ItemOutcome, now: datetime) -> bool:
    """Writes one outcome under its lease; False when the lease is lost."""
    job_id = session.execute(_RECORD, _record_params(outcome, now)).scalar()
    if job_id is None:
        log.warning("lease lost, result dropped item=%s", outcome.item_id)
        return False
    if outcome.outcome.pages:
        _write_pages(session, outcome)
    return True


def _write_alone(session_factory: SessionFactory, outcome: ItemOutcome, now: datetime) -> bool:
    try:
        with session_factory.begin() as session:
            return _write_outcome(session, outcome, now)
    except _ROW_ERRORS as exc:
        if is_retryable(exc):
            raise
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        log.error("result refused by the database item=%s: %s", outcome.item_id, reason)
        refused = ItemOutcome(
            outcome.item_id,
            outcome.lease_token,
            Outcome(
                error_code=ItemErrorCode.internal_error,
                error_message=f"The result could not be stored: {reason}",
            ),
        )
        with session_factory.begin() as session:
            return _write_outcome(session, refused, now)


def _page_rows(outcome: ItemOutcome) -> list[ItemPage]:
    return [
        ItemPage(
            item_id=outcome.item_id,
            page_number=page.page,
            result_text=storable_text(page.text),
            result_json=storable_json(page.json),
            error_code=page.error_code,
            error_message=storable_text(page.error_message),
            tokens_out=page.tokens_out,
        )
        for page in outcome.outcome.pages
    ]
