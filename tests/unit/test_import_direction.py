"""The layering in DESIGN.md, enforced: the CLI never imports torch; model/ and storage/
import nothing of ours; jobs/ never imports workers/ at module level."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"jobs", "model", "storage", "workers", "migrations"}


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["model", "storage"])
def test_leaf_packages_import_nothing_of_ours(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        ours = _all_imports(path) & (OURS - {package})
        assert not ours, f"{path.relative_to(ROOT)} imports {sorted(ours)}"


def test_jobs_does_not_import_workers_at_module_level() -> None:
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        assert "workers" not in _top_level_imports(path), path.relative_to(ROOT)


def test_cli_and_jobs_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import jobs.cli, jobs.submit, jobs.sweeper, jobs.queries, jobs.control, jobs.views\n"
        "import model, model.engine, model.errors, model.images, storage\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'boto3') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
