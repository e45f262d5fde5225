"""Plain SQL reads over the database's own driver (sqlite3, psycopg), without SQLAlchemy.

The commands a user types most (``jobs``, ``status``) read a handful of rows, and importing
SQLAlchemy alone took 0.18 s of the CLI's 0.3 s start-up budget (issue 27). Their reads are
written once here, as SQL text with ``:name`` parameters, and run the same on a connection of
our own (``open_reader``: the CLI) or on a SQLAlchemy session's (``session_reader``: the
worker, the web page, the tests), so there is one implementation of each read, not two.

Values cross as the ORM's ``UTCDateTime`` and ``JsonType`` store them: SQLite holds naive UTC
datetimes as text and JSON as text; PostgreSQL timestamptz and jsonb.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from jobs.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# ``:name`` not preceded by another colon (a PostgreSQL cast) or a word character.
_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class Reader:
    """Runs SQL text with ``:name`` parameters and returns plain rows. ``execute`` runs the
    driver's own text with bound values; ``dialect``: "sqlite" or "postgresql"."""

    def __init__(
        self, execute: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]], dialect: str
    ) -> None:
        self._execute = execute
        self.dialect = dialect
        self._texts: dict[str, str] = {}

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        bound = {name: self._bind(value) for name, value in params.items()}
        return self._execute(self._text(sql), bound)

    def first(self, sql: str, **params: Any) -> tuple[Any, ...] | None:
        found = self.rows(sql, **params)
        return found[0] if found else None

    def scalar(self, sql: str, **params: Any) -> Any:
        row = self.first(sql, **params)
        return None if row is None else row[0]

    def _text(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        converted = self._texts.get(sql)
        if converted is None:  # psycopg's named style: %(name)s, and a literal % doubled
            converted = _PARAMETER.sub(r"%(\1)s", sql.replace("%", "%%"))
            self._texts[sql] = converted
        return converted

    def _bind(self, value: Any) -> Any:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(UTC)
            # As SQLAlchemy's SQLite DATETIME stores it, so text comparisons order correctly.
            return value.replace(tzinfo=None).isoformat(" ") if self.dialect == "sqlite" else value
        return value


def when(value: Any) -> datetime | None:
    """A stored ``UTCDateTime`` as an aware UTC datetime (SQLite gives text)."""
    if value is None:
        return None
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def json_value(value: Any) -> Any:
    """A stored ``JsonType`` as Python (SQLite gives text; psycopg has decoded jsonb)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def session_reader(session: Session) -> Reader:
    """A reader on the session's connection, inside its transaction; errors are SQLAlchemy's
    (``DBAPIError``), as for every other statement the session runs."""
    connection = session.connection()

    def execute(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in connection.exec_driver_sql(sql, params)]

    return Reader(execute, connection.dialect.name)


@contextmanager
def open_reader(database_url: str, *, busy_seconds: float = 30) -> Iterator[Reader | None]:
    """A reader on a connection of its own to ``database_url`` (a SQLAlchemy URL), closed on
    exit; None for a URL it does not handle (a SQLite file that does not exist yet, a query
    string, another driver): the caller takes the SQLAlchemy path then. A connection that
    fails raises ``DatabaseUnavailableError``."""
    scheme, _, rest = database_url.partition("://")
    connection: Any
    if scheme == "sqlite":
        path = _sqlite_path(rest)
        if path is None:
            yield None
            return
        connection = sqlite3.connect(path, timeout=busy_seconds)
        unreachable: type[Exception] = sqlite3.OperationalError
        dialect = "sqlite"
    elif scheme in ("postgresql", "postgresql+psycopg") and "?" not in rest:
        import psycopg

        unreachable = psycopg.OperationalError
        try:
            connection = psycopg.connect(f"postgresql://{rest}", autocommit=True)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"The database is unreachable: {_first(exc)}") from exc
        dialect = "postgresql"
    else:
        yield None
        return

    def execute(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]
        except unreachable as exc:
            if dialect == "sqlite" and not _sqlite_unreachable(exc):
                raise
            raise DatabaseUnavailableError(f"The database is unreachable: {_first(exc)}") from exc
        finally:
            cursor.close()

    try:
        yield Reader(execute, dialect)
    finally:
        connection.close()


def _sqlite_unreachable(exc: Exception) -> bool:
    """A locked or unreadable file, not a statement the database refused."""
    text = str(exc)
    return "locked" in text or "unable to open" in text or "disk I/O" in text


def _sqlite_path(rest: str) -> str | None:
    """The file of ``sqlite:///relative`` or ``sqlite:////absolute``, if it exists."""
    if not rest.startswith("/") or "?" in rest:
        return None
    path = Path(unquote(rest[1:]))
    return str(path) if path.name and path.is_file() else None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
