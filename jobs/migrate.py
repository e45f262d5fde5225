"""Runs Alembic migrations programmatically, so ``llava-batch db upgrade`` needs no alembic.ini.

Checking that a database is current is on every command's path, so it costs no alembic import
(about a tenth of the CLI's start-up): the current revision is one SELECT on
``alembic_version``, and the newest one is read from the migration files' own
``revision``/``down_revision`` lines (a test checks it against Alembic's answer). Alembic itself
is imported only to migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

import migrations
from jobs.revisions import check_revision, head_revision

if TYPE_CHECKING:
    from alembic.config import Config


def build_alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation would choke on '%' in passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(engine: Engine) -> str:
    """Brings the schema to the newest revision; returns that revision."""
    from alembic import command

    config = build_alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head_revision()


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None when it has no llava-batch tables."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            return None
        raise


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def _is_missing_table(exc: OperationalError | ProgrammingError) -> bool:
    # SQLite: "no such table"; PostgreSQL: undefined_table (42P01). Anything else, such as an
    # unreachable server, is not "no tables" and propagates.
    return getattr(exc.orig, "sqlstate", None) == "42P01" or "no such table" in str(exc.orig)


def check_schema(engine: Engine) -> None:
    """Raises SchemaMissingError unless the database is at the newest revision."""
    check_revision(current_revision(engine))
