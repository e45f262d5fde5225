"""The migrations produce exactly the tables the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from jobs.db import Base, make_engine
from jobs.migrate import current_revision, head_revision, upgrade_database


def test_migrations_match_the_declared_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine)
    assert current_revision(engine) == head_revision(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    upgrade_database(engine)  # idempotent
