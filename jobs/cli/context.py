"""What a CLI command works with, built once from settings.

The database, the settings and the blob store are imported when a command opens its context,
not when the CLI starts: ``--help`` and the help of every command import none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from jobs.db import SessionFactory
    from jobs.settings import Settings
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
