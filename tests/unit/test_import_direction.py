"""The layering in DESIGN.md, enforced on every import statement (inside functions too, relative
imports resolved, ``importlib.import_module("…")`` included):

- ``model/`` and ``storage/`` import nothing of ours;
- ``jobs/`` never imports ``workers/``, nor torch and its kin (it may use ``model``'s interfaces);
- the CLI (``llava-batch``'s entry point, ``workers.cli``) never imports torch when it starts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"jobs", "model", "storage", "workers", "migrations"}
GPU_STACK = {"torch", "transformers", "bitsandbytes", "accelerate", "triton"}


def _package_of(path: Path) -> str:
    """The package a module's relative imports are resolved against."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1])


def _imports(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``, wherever it is written."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                yield node.lineno, ".".join([*base, node.module] if node.module else base)
            else:
                yield node.lineno, node.module or ""
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path.read_text(encoding="utf-8"), _package_of(path)):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("package", ["model", "storage"])
def test_leaf_packages_import_nothing_of_ours(package: str) -> None:
    assert _violations(package, OURS - {package}) == []


def test_jobs_never_imports_workers_anywhere() -> None:
    assert _violations("jobs", {"workers"}) == []


def test_jobs_never_imports_the_gpu_stack() -> None:
    assert _violations("jobs", GPU_STACK) == []


def test_the_checker_sees_every_kind_of_import() -> None:
    source = (
        "import os\n"
        "def f():\n"
        "    import workers.cli\n"
        "    from . import views\n"
        "    from .kinds import base\n"
        "    from .. import storage\n"
        "    importlib.import_module('workers.tasks')\n"
        "class C:\n"
        "    def g(self):\n"
        "        from workers import pipeline\n"
    )
    found = sorted(module for _, module in _imports(source, "jobs.lifecycle"))
    assert found == [
        "jobs",
        "jobs.lifecycle",
        "jobs.lifecycle.kinds",
        "os",
        "workers",
        "workers.cli",
        "workers.tasks",
    ]


def test_the_cli_and_jobs_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import workers.cli, jobs.cli, jobs.submit.job, jobs.sweeper, jobs.queries, jobs.control\n"
        "import jobs.views, model, model.engine, model.errors, model.images, storage\n"
        f"heavy = sorted(m for m in {sorted(GPU_STACK | {'boto3'})!r} if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
