"""Query plans of the statements a call really runs: captured as sent to the driver, then
explained with the same parameters (PostgreSQL's EXPLAIN, SQLite's EXPLAIN QUERY PLAN), so a
test checks the plan of the SQL the code builds, not of a copy written by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class Ran:
    sql: str
    params: Any


@contextmanager
def capture(engine: Engine) -> Iterator[list[Ran]]:
    """Every statement ``engine`` sends while the block runs (executemany ones left out)."""
    ran: list[Ran] = []

    def remember(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if not many:
            ran.append(Ran(sql, params))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        yield ran
    finally:
        event.remove(engine, "before_cursor_execute", remember)


def explain(engine: Engine, ran: Ran) -> str:
    """The plan of one captured statement, as text; nothing is executed."""
    prefix = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + ran.sql, ran.params).all()
        conn.rollback()
    # PostgreSQL: one line per row; SQLite: (id, parent, notused, detail).
    return "\n".join(str(row[-1]) for row in rows)


def plans_of(engine: Engine, call: Callable[[], Any], *, matching: str) -> list[str]:
    """The plans of the statements ``call`` runs whose SQL contains ``matching``."""
    with capture(engine) as ran:
        call()
    found = [explain(engine, r) for r in ran if matching in r.sql]
    assert found, f"no statement containing {matching!r} ran"
    return found
