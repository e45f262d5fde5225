"""Runs Alembic migrations programmatically, so ``llava-batch db upgrade`` needs no alembic.ini.

Checking that a database is current is on every command's path, so it costs no alembic import
(about a tenth of the CLI's start-up): the current revision is one SELECT on
``alembic_version``, and the newest one is read from the migration files' own
``revision``/``down_revision`` lines (a test checks it against Alembic's answer). Alembic itself
is imported only to migrate.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

import migrations
from jobs.errors import SchemaMissingError

if TYPE_CHECKING:
    from alembic.config import Config

VERSIONS = Path(migrations.__file__).parent / "versions"


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


def head_revision() -> str:
    """The newest revision the migrations define (the same for every database)."""
    return _read_head_revision(VERSIONS)


@functools.cache
def _read_head_revision(versions: Path) -> str:
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        found = _module_constants(path, ("revision", "down_revision"))
        if isinstance(found.get("revision"), str):
            revisions.add(found["revision"])
            down = found.get("down_revision")
            parents.update([down] if isinstance(down, str) else down or ())
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations in {versions} have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _module_constants(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """Module-level ``name = <literal>`` assignments, read without importing the module."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                found[target.id] = ast.literal_eval(value)
    return found


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
    current = current_revision(engine)
    if current != head_revision():
        state = "has no llava-batch tables" if current is None else f"is at revision {current}"
        raise SchemaMissingError(f"The database {state}; run `llava-batch db upgrade` first.")
