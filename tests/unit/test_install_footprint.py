"""The lean install (issue 13): a CPU install of llava-batch pulls no triton and no xgrammar.

The dependency closure is walked from pyproject.toml's own list (not the installed metadata of
llava-batch, which an old editable install can leave stale) through each installed package's
metadata, with environment markers evaluated for this machine. torch is the CPU build here, as
the README's install commands pin it; a CUDA torch brings triton by itself, which is its own.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def runtime_closure() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = [Requirement(spec) for spec in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(spec) for spec in requires(name) or []]
        except PackageNotFoundError:  # declared but not installed here: nothing below it to walk
            continue
    return seen


def test_a_cpu_install_carries_no_triton_and_no_xgrammar() -> None:
    closure = runtime_closure()
    assert {"torch", "transformers", "llguidance", "celery"} <= closure  # the walk reached them
    assert "triton" not in closure
    assert "xgrammar" not in closure
