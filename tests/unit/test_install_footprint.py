"""The lean install (issue 13): a CPU install of llava-batch pulls no triton and no xgrammar.

The dependency closure is walked from pyproject.toml's own list (not the installed metadata of
llava-batch, which an old editable install can leave stale) through each installed package's
metadata, with environment markers evaluated for this machine. torch is the CPU build here, as
the README's install commands pin it; a CUDA torch brings triton by itself, which is its own.
"""

from __future__ import annotations

import re
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


def _torch_pins(text: str) -> set[str]:
    return set(re.findall(r"torch==(\d+\.\d+\.\d+)", text))


def test_the_install_docs_say_how_to_get_the_cpu_and_the_gpu_build_of_the_pinned_torch() -> None:
    """On a stock machine PyPI's torch is the CUDA build: the README names PyTorch's CPU wheel
    index for the CPU build and a CUDA one for the GPU build, at the version everything pins."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    deployment = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (pin,) = _torch_pins(dockerfile)
    assert _torch_pins(readme) == _torch_pins(deployment) == {pin}
    cpu = f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in readme
    assert re.search(r"https://download\.pytorch\.org/whl/cu\d+", readme)
    gpu = re.search(
        rf"pip install torch=={pin} --index-url https://download\.pytorch\.org/whl/cu\d+",
        deployment,
    )
    assert gpu, "docs/deployment.md: the GPU build's install line"
    # The README's two commands (CI runs the second) install torch at that pin, unchanged.
    for marker in ("<!-- demo-command -->", "<!-- test-command -->"):
        command = readme.split(marker, 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
        assert command.startswith(
            f"python3 -m venv .venv && .venv/bin/pip install torch=={pin} -e "
        )
