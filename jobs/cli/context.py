"""What a CLI command works with, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from jobs.db import SessionFactory, make_session_factory, open_database
from jobs.migrate import check_schema as check_schema_is_current
from jobs.migrate import is_current, upgrade_database
from jobs.settings import Settings, load_settings
from storage import Blobs, open_blobs


@dataclass(frozen=True)
class Context:
    settings: Settings
    engine: Engine
    session_factory: SessionFactory
    blobs: Blobs


def open_context(*, check_schema: bool = True) -> Context:
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
