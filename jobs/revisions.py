"""The schema's newest revision, read from the migration files without Alembic or SQLAlchemy:
checking that a database is current is on every command's path (``jobs.migrate``,
``jobs.cli.context``), the plain-SQL reads of ``status`` and ``jobs`` included."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

import migrations
from jobs.errors import SchemaMissingError

VERSIONS = Path(migrations.__file__).parent / "versions"


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


def check_revision(current: str | None) -> None:
    """Raises SchemaMissingError unless ``current`` (a database's revision; None: it has no
    llava-batch tables) is the newest."""
    if current != head_revision():
        state = "has no llava-batch tables" if current is None else f"is at revision {current}"
        raise SchemaMissingError(f"The database {state}; run `llava-batch db upgrade` first.")
