"""The layering in docs/design.md ("Packages and import rules"), enforced on every import
statement (inside functions too, relative imports resolved, ``importlib.import_module("…")``
included):

- ``model/`` and ``storage/`` import nothing of ours;
- ``jobs/`` never imports ``workers/``, nor torch and its kin (it may use ``model``'s interfaces);
- CLI code lives in ``jobs/cli/``: no other module imports it but ``workers/cli/``, the
  composition root, which is so the only place that imports both it and the worker side;
- no module reads settings when it is imported (they are built once and passed whole);
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


def _violations(package: str, forbidden: set[str], *, outside: str | None = None) -> list[str]:
    """Imports of a module under one of ``forbidden`` (dotted prefixes) by modules of
    ``package``, except those under the folder ``outside``."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if outside is not None and path.is_relative_to(ROOT / outside):
            continue
        for line, module in _imports(path.read_text(encoding="utf-8"), _package_of(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("package", ["model", "storage"])
def test_leaf_packages_import_nothing_of_ours(package: str) -> None:
    assert _violations(package, OURS - {package}) == []


def test_jobs_never_imports_workers_anywhere() -> None:
    assert _violations("jobs", {"workers"}) == []


def test_jobs_never_imports_the_gpu_stack() -> None:
    assert _violations("jobs", GPU_STACK) == []


def test_no_domain_module_imports_cli_code() -> None:
    assert _violations("jobs", {"jobs.cli"}, outside="jobs/cli") == []


def test_only_the_composition_root_imports_both_the_cli_and_the_worker_side() -> None:
    assert _violations("workers", {"jobs.cli"}, outside="workers/cli") == []
    for package in ("model", "storage", "migrations"):
        assert _violations(package, {"jobs.cli"}) == []


def test_the_checker_sees_cli_imports_by_prefix_only() -> None:
    """``jobs.cli`` and ``jobs.cli.views`` are CLI code; ``jobs.client`` would not be."""
    found = [
        m
        for _, m in _imports("import jobs.cli.views\nimport jobs.client\n", "jobs")
        if any(m == f or m.startswith(f + ".") for f in {"jobs.cli"})
    ]
    assert found == ["jobs.cli.views"]


def _import_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports (lazily or for typing too)."""
    modules: dict[str, Path] = {}
    for top in ("jobs", "workers", "model", "storage"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for _, module in _imports(path.read_text(encoding="utf-8"), _package_of(path)):
            parts = module.split(".")
            for end in range(len(parts), 0, -1):  # the module itself, or the package it is in
                if ".".join(parts[:end]) in modules:
                    found.add(".".join(parts[:end]))
                    break
        graph[name] = found - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, round and round (Tarjan)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while (top := stack.pop()) != node:
                group.append(top)
            if group:
                found.append(sorted([*group, node]))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """Counting every import, the lazy ones and those only for typing: a module that imports
    one that imports it back is one piece split in two (as the fingerprint and the submit
    request once were)."""
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


# Settings that cannot be built: a module that reads them while it is imported fails to import.
_UNREADABLE_SETTINGS = {"LLAVA_BATCH_MAX_ATTEMPTS": "not-a-number", "LLAVA_BATCH_NO_SUCH": "1"}


def _import_everything(extra: str = "") -> subprocess.CompletedProcess[str]:
    code = (
        "import importlib, pkgutil\n"
        "for top in ('storage', 'model', 'jobs', 'workers'):\n"
        "    package = importlib.import_module(top)\n"
        "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        importlib.import_module(info.name)\n" + extra
    )
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, **_UNREADABLE_SETTINGS},
        timeout=240,
    )


def test_no_module_reads_settings_at_import_time() -> None:
    """Every module of the product imports while the environment holds settings that cannot
    be built; the same environment does refuse them when they are read (so this cannot pass
    because nothing was read anyway)."""
    read_then = "\nfrom jobs.settings import load_settings\nload_settings()\n"
    imported = _import_everything()
    assert imported.returncode == 0, imported.stderr[-3000:]
    read = _import_everything(read_then)
    assert read.returncode != 0 and "LLAVA_BATCH_NO_SUCH" in read.stderr, read.stderr[-2000:]


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
        "import workers.cli, jobs.cli.app, jobs.submit.job, jobs.sweeper, jobs.queries\n"
        "import jobs.control, jobs.cli.views, model, model.engine, model.errors, model.images\n"
        "import storage\n"
        "workers.cli.build_app()\n"
        f"heavy = sorted(m for m in {sorted(GPU_STACK | {'boto3'})!r} if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
