"""Reuse: a claimed item whose result an earlier item already has gets a copy of it instead of
a model run (``--reuse``; docs/design.md#results-reused-across-jobs).

It happens where a worker has claimed a batch, before anything is read or decoded: only there is
the model's revision certain (it is the worker's own). An earlier item is a source when its
``reuse_key`` (``jobs.submit.reuse_key``: input bytes, kind, prompt or request, generation
settings) equals the claimed item's, it ``succeeded`` by a model run of its own (not a copy),
by the same model name, revision and quantisation as this worker serves, and its job is not
being deleted. The copy is recorded ``succeeded`` under the claim's lease, like any result,
with ``reused_from`` naming the source and no tokens (none were spent).

One read (the ``ix_items_reuse_key`` index, for the whole batch) and one write per batch, in
one short transaction; a job that did not ask for reuse never comes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Executable,
    Table,
    Update,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from jobs.db import (
    REUSABLE_PREDICATE,
    Item,
    ItemPage,
    Job,
    SessionFactory,
    among,
    commit_without_flush,
    new_id,
    utcnow,
)
from jobs.fleet import Serving
from jobs.hooks import reached
from jobs.lifecycle.common import ClaimedItem, is_postgres
from jobs.states import ItemStatus, JobStatus


def asks_for_reuse(params: dict[str, Any]) -> bool:
    """Whether a job's params (``jobs.params``) ask for reuse (``--reuse``)."""
    return params.get("reuse") is True


def reuse_results(
    session_factory: SessionFactory,
    claimed: Sequence[ClaimedItem],
    serving: Serving,
    *,
    pages: bool = False,
    now: datetime | None = None,
) -> dict[str, str]:
    """Records a copy of an earlier result for each claimed item that has one; returns
    ``{item id: source item id}`` of the items it recorded (the rest are the caller's to run).
    ``pages``: the kind reads documents, so a source's page results are copied too. Nothing
    is reused for a worker whose revision is unknown: the same name may be another model."""
    keyed = [item for item in claimed if item.reuse_key is not None]
    if not keyed or serving.revision is None:
        return {}
    now = now or utcnow()
    with session_factory.begin() as session:
        keys = sorted({item.reuse_key for item in keyed if item.reuse_key is not None})
        found = {
            row.reuse_key: row
            for row in session.execute(
                _sources(is_postgres(session), hold=pages),
                {
                    "r_keys": keys,
                    "r_model": serving.model,
                    "r_revision": serving.revision,
                    "r_quantization": serving.quantization,
                },
            )
        }
        copies = [(item, found[item.reuse_key]) for item in keyed if item.reuse_key in found]
        if not copies:
            return {}
        written = _write(session, copies, now)
        reached("reuse:copied")
        if pages and written:
            _copy_pages(session, {item.id: src.id for item, src in copies if item.id in written})
        # As a record commits (jobs.lifecycle.records): a copy a database crash takes back
        # leaves its item running under a lease nobody renews, and the sweeper runs it again.
        commit_without_flush(session)
    return {item.id: source.id for item, source in copies if item.id in written}


@cache
def _sources(postgres: bool, *, hold: bool = False) -> Executable:
    """One source per key (the lowest id among equals: any will do, all were run alike), with
    what is copied of it. The conditions of the partial index ix_items_reuse_key are repeated
    word for word, the state as a literal, so the planner can prove the index applies (a bound
    state would not, in a prepared statement's generic plan). Built once per database, as the
    claim's statements are (jobs.lifecycle.claims).

    ``hold``: the sources are locked ``FOR SHARE`` on PostgreSQL, where each statement reads
    anew: a document's pages are copied by a later statement, and a deletion of the source's
    job committed in between would leave the copy without them. Its DELETE waits for this
    short transaction instead. Only then: the lock writes to each source's row. (On SQLite
    the copy's write holds the database until it commits.)"""
    if not postgres:
        return _SQLITE_SOURCES
    items: Table = Item.__table__  # type: ignore[assignment]
    jobs: Table = Job.__table__  # type: ignore[assignment]
    candidate = items.alias("candidate")
    c = candidate.c
    picked = (
        select(func.min(c.id))
        .join(jobs, jobs.c.id == c.job_id)
        .where(
            # As ``jobs.db.among``: one array parameter, whatever the batch's size.
            c.reuse_key == any_(bindparam("r_keys", type_=ARRAY(c.reuse_key.type))),
            text(" AND ".join(f"candidate.{term}" for term in REUSABLE_PREDICATE.split(" AND "))),
            c.model == bindparam("r_model", type_=c.model.type),
            c.model_revision == bindparam("r_revision", type_=c.model_revision.type),
            c.quantization == bindparam("r_quantization", type_=c.quantization.type),
            jobs.c.status != literal_column(f"'{JobStatus.deleting.value}'"),
        )
        .group_by(c.reuse_key)
    )
    i = items.c
    found = select(i.id, i.reuse_key, i.result_text, i.result_json, i.finish_reason).where(
        i.id.in_(picked)
    )
    return found.with_for_update(read=True, of=items) if hold else found


# SQLite, without statistics unless someone ran ANALYZE, would read the candidates through the
# state's index (status = 'succeeded': most of a big table) rather than the selective partial
# one; named with INDEXED BY, the index is used or the statement fails, never a walk through
# every result. SQLAlchemy renders no such hint for SQLite, hence the text.
_SQLITE_SOURCES = (
    text(
        "SELECT items.id, items.reuse_key, items.result_text, items.result_json, "
        "items.finish_reason FROM items WHERE items.id IN ("
        "SELECT min(candidate.id) FROM items AS candidate INDEXED BY ix_items_reuse_key "
        "JOIN jobs ON jobs.id = candidate.job_id "
        "WHERE candidate.reuse_key IN :r_keys AND "
        + " AND ".join(f"candidate.{term}" for term in REUSABLE_PREDICATE.split(" AND "))
        + " AND candidate.model = :r_model AND candidate.model_revision = :r_revision "
        "AND candidate.quantization = :r_quantization "
        f"AND jobs.status != '{JobStatus.deleting.value}' "
        "GROUP BY candidate.reuse_key)"
    )
    .bindparams(bindparam("r_keys", expanding=True))
    .columns(
        Item.__table__.c.id,
        Item.__table__.c.reuse_key,
        Item.__table__.c.result_text,
        Item.__table__.c.result_json,
        Item.__table__.c.finish_reason,
    )
)


def _write(session: Session, copies: list[tuple[ClaimedItem, Any]], now: datetime) -> set[str]:
    """Records each copy under its item's lease; returns the ids written (an item whose lease
    is gone is someone else's now, and left alone)."""
    rows = [
        {
            "u_id": item.id,
            "u_token": item.lease_token,
            "u_text": source.result_text,
            "u_json": source.result_json,
            "u_finish": source.finish_reason,
            "u_from": source.id,
            "u_now": now,
        }
        for item, source in copies
    ]
    statement = _record_copy()
    result = session.execute(statement, rows)
    if result.rowcount == len(rows):  # type: ignore[attr-defined]
        return {item.id for item, _ in copies}
    # A lease ran out in between (rare): the rows written are the ones now holding a copy.
    # (One that another worker has claimed and copied since is done as well: not to be run.)
    done = session.execute(
        select(Item.id).where(
            among(session, Item.id, [row["u_id"] for row in rows]),
            Item.reused_from.is_not(None),
        )
    )
    return {row.id for row in done}


@cache
def _record_copy() -> Update:
    # Built once, like the record's statement (jobs.lifecycle.records): the hot path.
    table: Table = Item.__table__  # type: ignore[assignment]
    items = table.c
    return (
        update(table)
        .where(
            items.id == bindparam("u_id"),
            items.lease_token == bindparam("u_token"),
            items.status == ItemStatus.running,
        )
        .values(
            status=ItemStatus.succeeded,
            result_text=bindparam("u_text", type_=items.result_text.type),
            result_json=bindparam("u_json", type_=items.result_json.type),
            finish_reason=bindparam("u_finish", type_=items.finish_reason.type),
            reused_from=bindparam("u_from", type_=items.reused_from.type),
            # No tokens: none were spent on it (the source has what its run cost).
            tokens_out=None,
            prompt_tokens=None,
            completion_tokens=None,
            error_code=None,
            error_message=None,
            finished_at=bindparam("u_now", type_=items.finished_at.type),
            lease_token=None,
            lease_expires_at=None,
        )
    )


def _copy_pages(session: Session, source_of: dict[str, str]) -> None:
    """A document item's page results, copied from its source's (any an earlier attempt of
    the item left go first, as a record's do)."""
    items = list(source_of)
    session.execute(delete(ItemPage).where(among(session, ItemPage.item_id, items)))
    targets: dict[str, list[str]] = {}
    for item, source in source_of.items():
        targets.setdefault(source, []).append(item)
    pages = session.execute(
        select(ItemPage).where(among(session, ItemPage.item_id, list(targets)))
    ).scalars()
    rows = [
        {
            "id": new_id(),
            "item_id": target,
            "page_number": page.page_number,
            "result_text": page.result_text,
            "result_json": page.result_json,
            "error_code": page.error_code,
            "error_message": page.error_message,
            "tokens_out": None,
        }
        for page in pages
        for target in targets[page.item_id]
    ]
    if rows:
        session.execute(insert(ItemPage), rows)
