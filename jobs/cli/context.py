"""What a CLI command works with, built once from settings.

The database, the settings and the blob store are imported when a command opens its context,
not when the CLI starts: ``--help`` and the help of every command import none of them. The
commands that only read a job (``jobs``, ``status``) open a plain-SQL reader instead
(``open_reading``), which imports no SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from jobs.db import SessionFactory
    from jobs.settings import Settings
    from jobs.sqlread import Reader
    from storage import Blobs


@dataclass(frozen=True)
class Context:
    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    blobs: Blobs


def open_context(*, check_schema: bool = True) -> Context:
    from jobs.db import make_session_factory, open_database
    from jobs.migrate import check_schema as check_schema_is_current
    from jobs.migrate import is_current, upgrade_database
    from jobs.settings import load_settings
    from storage import open_blobs

    settings = load_settings()
    if not settings.database_url:
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = open_database(settings)
    if check_schema:
        if settings.database_url:
            check_schema_is_current(engine)
        else:
            # The embedded default (a SQLite file under the home dir) sets itself up, so the
            # first command on a fresh machine just works; Alembic loads only when it must.
            if not is_current(engine):
                upgrade_database(engine)
    return Context(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        blobs=open_blobs(settings.resolved_storage_url),
    )


@contextmanager
def open_reading() -> Iterator[tuple[Settings, Reader]]:
    """The settings and a reader (``jobs.sqlread``) on a connection of its own, closed on
    exit. Where the reader cannot serve (a database URL it does not handle, the embedded
    database not yet created or behind the migrations), through ``open_context``, which sets
    the embedded database up, in a session."""
    from jobs.revisions import check_revision, head_revision
    from jobs.settings import load_settings
    from jobs.sqlread import open_reader, session_reader

    settings = load_settings()
    with open_reader(settings.resolved_database_url) as reader:
        if reader is not None:
            current = _revision(reader)
            if settings.database_url:
                check_revision(current)  # a configured database is migrated by its owner
            if current == head_revision():
                yield settings, reader
                return
    ctx = open_context()
    with ctx.session_factory() as session:
        yield ctx.settings, session_reader(session)


def _revision(reader: Reader) -> str | None:
    """The database's schema revision; None when it has no llava-batch tables."""
    try:
        found = reader.scalar("SELECT version_num FROM alembic_version")
    except Exception as exc:  # the driver's own class: sqlite3's or psycopg's
        if "alembic_version" in str(exc) and (
            "no such table" in str(exc) or getattr(exc, "sqlstate", None) == "42P01"
        ):
            return None
        raise
    return None if found is None else str(found)
