"""CLI start-up, whole process: ``--help``, ``submit --help``, ``jobs`` and ``status JOB``.

    python bench/startup.py [--runs 5] [--trees /path/a,/path/b] [--url postgresql://...]

Each command runs as a user runs it: the virtual environment's ``llava-batch`` script in a fresh
process, timed from its start to its exit. ``jobs`` and ``status`` run against a SQLite file and
a throwaway PostgreSQL database (created on the local server for the run, one job submitted in
each); the help pages touch no database. Every (tree, database, command) runs once to warm the
page cache, then ``--runs`` times, the trees and commands taking turns, so checkouts compared in
one run (``--trees``, each put first on ``PYTHONPATH``; default: this one) share the machine's
load. Prints the median and the spread in seconds, bare ``python -c pass`` for scale, and the
load average before and after. The design target: every median ≤ 0.3 s.

``--instructions`` counts instead of timing: each (tree, command) runs once under valgrind's
callgrind, and the table gives the instructions the process ran, in millions. A count is the
same for the same code and inputs however loaded the machine is, where a median of wall times
moves by a tenth or more from run to run on a shared machine: it compares trees to the percent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "llava-batch")
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]

HELP = {"--help": ["--help"], "submit --help": ["submit", "--help"]}


def _env(tree: Path, database_url: str | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
    env["PYTHONPATH"] = str(tree)
    # As installed: our modules' bytecode cached (the warm-up run writes it), not compiled from
    # source by every process, which PYTHONDONTWRITEBYTECODE (set in CI shells) would make it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["LLAVA_BATCH_HOME"] = str(home)
    # A broker nobody listens on: a submit goes through without one (the sweeper re-publishes).
    env["LLAVA_BATCH_BROKER_URL"] = "redis://127.0.0.1:1/0"
    env["LLAVA_BATCH_STORAGE_URL"] = str(home / "blobs")
    if database_url:
        env["LLAVA_BATCH_DATABASE_URL"] = database_url
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise SystemExit(f"llava-batch {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _timed(env: dict[str, str], args: list[str]) -> tuple[float, float]:
    """Wall seconds, and the CPU seconds (user + system) the process used: on a loaded machine
    the wall time counts the waits for a core, the CPU time hardly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def _counted(command: list[str], env: dict[str, str] | None = None) -> float:
    """Millions of instructions ``command`` ran, counted by callgrind (no profile written)."""
    result = subprocess.run(
        [*CALLGRIND, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=True,
    )
    return collected(result.stderr) / 1e6


def collected(report: str) -> int:
    """The instruction count in callgrind's closing report (``==PID== Collected : N``)."""
    found = re.search(r"^==\d+== Collected : (\d+)$", report, re.MULTILINE)
    if found is None:
        raise SystemExit(f"callgrind reported no count:\n{report[-2000:]}")
    return int(found.group(1))


def _one_job(env: dict[str, str], work: Path) -> str:
    """Migrates the database and submits one caption job; returns its id."""
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), "white").save(images / "one.png")
    _cli(env, "db", "upgrade")
    return str(json.loads(_cli(env, "submit", "caption", str(images), "--json"))["job_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--trees", default=str(ROOT), help="checkouts to compare, by commas")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind) instead"
    )
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    load_before = os.getloadavg()

    name = f"bench_startup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    pg = f"{args.url.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg://")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cases: list[tuple[str, str, list[str]]] = [("-", c, a) for c, a in HELP.items()]
            envs: dict[tuple[Path, str], dict[str, str]] = {}
            for database, url in (("sqlite", f"sqlite:///{work / 'jobs.sqlite3'}"), ("pg", pg)):
                for tree in trees:
                    envs[tree, database] = _env(tree, url, work / "home")
                job = _one_job(envs[trees[0], database], work)
                cases += [(database, "jobs", ["jobs"]), (database, "status JOB", ["status", job])]
            for tree in trees:
                envs[tree, "-"] = envs[tree, "sqlite"]

            if args.instructions:
                _show_counts(trees, cases, envs)
                return
            timings: dict[tuple[Path, str, str], list[tuple[float, float]]] = {}
            bare = [_timed_bare() for _ in range(args.runs)]
            for warm in (True, False):
                for _ in range(1 if warm else args.runs):
                    for database, command, argv in cases:
                        for tree in trees:
                            measured = _timed(envs[tree, database], argv)
                            if not warm:
                                timings.setdefault((tree, database, command), []).append(measured)
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"bare python -c pass: median {statistics.median(bare):.3f} s")
    print("median wall seconds (lowest to highest), median CPU seconds of the process")
    header = "".join(f"  {tree.name:>36}" for tree in trees)
    print(f"{'command':<14} {'db':<7}{header}")
    for database, command, _ in cases:
        cells = ""
        for tree in trees:
            wall = [w for w, _ in timings[tree, database, command]]
            cpu = statistics.median(c for _, c in timings[tree, database, command])
            spread = f"({min(wall):.3f} to {max(wall):.3f})"
            cells += f"  {statistics.median(wall):6.3f} {spread} cpu {cpu:.3f}"
        print(f"{command:<14} {database:<7}{cells}")


def _show_counts(
    trees: list[Path],
    cases: list[tuple[str, str, list[str]]],
    envs: dict[tuple[Path, str], dict[str, str]],
) -> None:
    for database, _, argv in cases:  # once each first: our bytecode written, the cache warm
        for tree in trees:
            _timed(envs[tree, database], argv)
    bare = _counted([sys.executable, "-c", "pass"])
    print(f"bare python -c pass: {bare:.0f} M instructions")
    print("millions of instructions the process ran (callgrind), against the first tree")
    header = "".join(f"  {tree.name:>20}" for tree in trees)
    print(f"{'command':<14} {'db':<7}{header}")
    for database, command, argv in cases:
        counts = [_counted([sys.executable, CLI, *argv], envs[tree, database]) for tree in trees]
        cells = f"  {counts[0]:>20.0f}"
        for count in counts[1:]:
            cells += f"  {count:>10.0f} ({count / counts[0] - 1:+.1%})"
        print(f"{command:<14} {database:<7}{cells}")


def _timed_bare() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
