"""The wheels a lent GPU machine lacks for ``bench/throughput.py --gpu``, fetched here for it.

    python bench/device_wheels.py [--dest .whl] [--dry-run]

The device machines (the ``device`` tool) run an image with torch, transformers, pillow, typer,
rich, accelerate and more, on CPython 3.12, and reach no package index. What the GPU bench
imports beyond that image has to travel with the call, as wheels in its ``carry`` (64 MiB for
the working tree and all it carries). Finding that set on the device costs device time, a
failed call per missing package; this finds it here instead:

1. it runs ``bench/throughput.py --gpu --check`` on this CPU (a scaled-down checkpoint, two
   images: the same code path) and records every distribution whose modules were imported;
2. of those it keeps what the project itself requires (its dependencies and the ``gpu`` extra,
   followed through their own requirements, but not into the image's packages, whose needs the
   image meets) and the image lacks; plus bitsandbytes, which the 4bit precision loads and a
   CPU ``--check`` does not;
3. it fetches each at this environment's version as a CPython 3.12 manylinux wheel (``pip
   download --no-deps``), and prints their total size and the device command.

Left out on purpose: boto3 and what it needs. Here accelerate imports boto3 whenever it is
installed; our storage imports it only for an ``s3://`` URL, and the bench stores locally.

The image's packages are those the device tool's KINDS.md listed on 2026-11-17. A package it
gains or loses later shows as an import error in the device's output, not as a wrong figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "llava-batch"
ALWAYS = ("bitsandbytes",)  # the 4bit precision; --check on a CPU does not load it
NOT_NEEDED_THERE = frozenset({"boto3", "botocore", "s3transfer", "jmespath"})
# The device image's Python packages (KINDS.md, "Python packages already there", 2026-11-17).
_IMAGE_LIST = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
    nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
    nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
    nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
    protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
DEVICE_IMAGE = frozenset(_IMAGE_LIST.split())
# The wheel platforms of that machine: x86-64 with glibc 2.39 (the device README). pip matches
# each manylinux_2_N tag exactly, and bitsandbytes and llguidance ship only newer ones.
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CARRY_LIMIT = 64 * 2**20
CHECK_ARGS = ("--gpu", "--check", "--items", "2", "--batch-sizes", "1", "--max-new-tokens", "1")
CHECK_ARGS += ("--precisions", "float32")
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 "
    "|| exit; python3 bench/throughput.py --gpu --precisions bfloat16,4bit "
    "--batch-sizes 16,32,64 --json-out $OUT/gpu.json"
)
# Run in a child: the bench as ``python bench/throughput.py`` runs it, then, at exit, the
# distributions of every top-level module it imported, as JSON on the last line of stderr.
_RECORDER = """
import atexit, json, runpy, sys
from importlib import metadata
def _report():
    owners = metadata.packages_distributions()
    found = {d for name in list(sys.modules) for d in owners.get(name.partition(".")[0], [])}
    print("\\n" + json.dumps(sorted(found)), file=sys.stderr)
atexit.register(_report)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, str(__import__("pathlib").Path(script).parent))
runpy.run_path(script, run_name="__main__")
"""


def normalise(name: str) -> str:
    """A distribution's name as the index compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_by(script: Path, args: Iterable[str]) -> set[str]:
    """The distributions whose modules ``script`` imported when run with ``args`` (normalised);
    SystemExit if it failed."""
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [sys.executable, "-c", _RECORDER, str(script), *args],
            cwd=ROOT,
            env={**_environ(), "TMPDIR": scratch},
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise SystemExit(f"{script.name} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return {normalise(name) for name in json.loads(done.stderr.strip().splitlines()[-1])}


def _environ() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def required_by(root: str, extras: Iterable[str], *, stop: frozenset[str]) -> set[str]:
    """``root`` and what it requires with ``extras``, followed through each requirement's own
    (and the extras asked of it), installed here; a name in ``stop`` is kept, not followed."""
    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    while todo:
        name, asked = todo.pop()
        key = normalise(name)
        if key in found:
            continue
        found.add(key)
        if key in stop:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in (asked or {""})
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return found


def to_carry(imported: set[str], required: set[str]) -> list[str]:
    """The distributions to send as wheels: imported, required by the project, not in the
    image, not ours; and those the CPU check cannot show."""
    keep = (imported & required) - DEVICE_IMAGE - NOT_NEEDED_THERE - {normalise(PROJECT)}
    return sorted(keep | {normalise(name) for name in ALWAYS})


def download(names: Iterable[str], dest: Path) -> list[Path]:
    """Each of ``names`` at this environment's version, as a CPython 3.12 wheel for the device."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={metadata.version(name)}" for name in names]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    subprocess.run([*command, *platforms, "--dest", str(dest), *pins], check=True)
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="where the wheels go")
    parser.add_argument("--dry-run", action="store_true", help="name them, fetch nothing")
    args = parser.parse_args(argv)
    imported = imported_by(ROOT / "bench" / "throughput.py", CHECK_ARGS)
    names = to_carry(imported, required_by(PROJECT, ["gpu"], stop=DEVICE_IMAGE))
    print("to carry:", ", ".join(f"{n}=={metadata.version(n)}" for n in names))
    if args.dry_run:
        return 0
    wheels = download(names, args.dest)
    total = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")
    if total > CARRY_LIMIT - 8 * 2**20:  # the working tree travels in the same 64 MiB
        print("too much for one call: carry bitsandbytes in a second call, for 4bit alone")
    print(f"device: run(carry=['.whl'], command={DEVICE_COMMAND!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
