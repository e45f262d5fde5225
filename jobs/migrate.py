"""Runs Alembic migrations programmatically, so ``llava-batch db upgrade`` needs no alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import migrations
from jobs.errors import SchemaMissingError


def build_alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation would choke on '%' in passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(engine: Engine) -> str:
    """Brings the schema to the newest revision; returns that revision."""
    config = build_alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return head_revision(engine)


def head_revision(engine: Engine) -> str:
    script = ScriptDirectory.from_config(build_alembic_config(str(engine.url)))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raises SchemaMissingError unless the database is at the newest revision."""
    current = current_revision(engine)
    if current != head_revision(engine):
        state = "has no llava-batch tables" if current is None else f"is at revision {current}"
        raise SchemaMissingError(f"The database {state}; run `llava-batch db upgrade` first.")
