"""Where a batch's time goes, per thread and per stage: a sampling profile of the system run.

    python bench/profile_stages.py [--items 288] [--batch-size 8] [--max-new-tokens 32]
                                   [--model tiny-llava] [--rate 250] [--json PATH]

Runs exactly what bench/throughput.py's system column runs (the same catalogue JPEGs, engine,
warm-up, untimed stub run first, then ``run_embedded``: ``run_job_locally`` on SQLite and local
storage) while py-spy samples every thread of this process. Needs py-spy, a bench-only tool not
among the project's dependencies (``pip install py-spy``), and the right to ptrace this process
(root, or ``kernel.yama.ptrace_scope`` 0).

Two py-spy recorders run side by side: one with ``--idle`` (every thread at every tick: where
each thread was) and one without (only threads the kernel has running or runnable: where the
CPU went). Per thread and stage, "on CPU" is the second's seconds and "off CPU" the difference:
waiting for the GIL, a lock (the engine's device lock), I/O or a queue.

Each sample's stage is the innermost frame that matches ``STAGES`` (our functions and the
libraries they call); a stack whose innermost frame is a wait (``WAITING``) is ``idle``, one with
no stage but a database library frame is ``other database``, anything else ``other``. Threads
are grouped by their part (``ROLES``): each batch has its own slot thread (the one that calls
the model), decode and fetch pools and lease keeper; submit has a pool of its own.

"On CPU" is py-spy's "active": the kernel has the thread running or runnable, so on a busy
machine it includes time waiting for a core. Shares matter more than seconds there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (stage, path fragment, function or None for any in the file). Per frame the first rule that
# matches wins; per stack the innermost frame that matches any. torch and the database
# libraries are not here: they run under several stages (a fast image processor is torch), so
# the caller's frame decides.
STAGES: tuple[tuple[str, str, str | None], ...] = (
    ("decode", "workers/ahead.py", "_decode"),
    # Reading an input and its header (before the decode proper) counts as decoding it.
    ("decode", "workers/pipeline.py", "fetch_input"),
    ("decode", "workers/pipeline.py", "plan_units"),
    ("decode", "workers/pipeline.py", "plan_images"),
    ("decode", "workers/pipeline.py", "_render_page"),
    ("decode", "model/images.py", None),
    ("decode", "model/documents.py", None),
    ("preprocessing", "image_processing", None),  # the processor's image part, slow or fast
    ("preprocessing", "transformers/image_", None),  # image_transforms, image_utils
    ("preprocessing", "torchvision/", None),
    ("tokenising", "tokenization_", None),
    ("tokenising", "tokenizers/", None),
    ("tokenising", "chat_template", None),
    ("tokenising", "jinja2/", None),
    ("tokenising", "model/transformers_engine.py", "_build_prompt"),
    ("tokenising", "model/transformers_engine.py", "_count_templated"),
    ("tokenising", "model/transformers_engine.py", "_decode"),
    # The processor's own glue (placeholders expanded, outputs joined): after its tokenizer and
    # image processor, which are deeper and so win.
    ("preprocessing", "processing_", None),
    ("generate", "transformers/generation/", None),
    ("generate", "modeling_", None),
    ("generate", "model/transformers_engine.py", "_encode_shared"),
    ("generate", "model/sampling.py", None),
    ("generate", "model/constrained.py", None),
    # The rest of the engine's ``generate``: waiting for its device lock (another slot's batch
    # generating), the output copied to lists.
    ("generate", "model/transformers_engine.py", "generate"),
    ("claim", "workers/pipeline.py", "claim_with_retry"),
    ("other database", "jobs/lifecycle/claims.py", "renew_lease"),  # the lease keeper's beat
    ("claim", "jobs/lifecycle/claims.py", None),
    ("record", "workers/pipeline.py", "record_with_retry"),
    ("record", "jobs/lifecycle/records.py", None),
    ("record", "jobs/lifecycle/finalise.py", None),
    ("submit", "jobs/submit/", None),
    # A pool thread done with a task wakes the thread waiting for it; on a busy machine a niced
    # decode thread is then often seen runnable here, waiting for a core or the GIL.
    ("hand-over", "concurrent/futures/_base.py", "set_result"),
    # run_embedded migrates its scratch database before its clock starts and removes its
    # scratch home (a copy of every input) after it stops, both inside the profiled window.
    ("bench setup", "jobs/migrate.py", "upgrade_database"),
    ("bench cleanup", "shutil.py", "rmtree"),
)
# Innermost frames that block: a lock or condition, a queue, a future, select/poll, a sleep.
# Calls into C (``time.sleep``, ``SimpleQueue.get``) show as their Python caller.
WAITING: tuple[tuple[str, str | None], ...] = (
    ("threading.py", "wait"),
    ("threading.py", "acquire"),
    ("threading.py", "join"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("queue.py", "get"),
    ("queue.py", "put"),
    ("selectors.py", "select"),
    ("concurrent/futures/_base.py", "result"),
    ("concurrent/futures/_base.py", "wait"),
    ("concurrent/futures/_base.py", "as_completed"),
    ("concurrent/futures/thread.py", "_worker"),  # a pool thread between tasks, in its get
    ("workers/local.py", "_next_done"),
    ("workers/local.py", "_sleep_unless_stopped"),
)
DATABASE = ("sqlalchemy/", "sqlite3/", "psycopg", "jobs/db.py")
# A thread's part, from a frame anywhere in any of its stacks; the first rule that any matches.
# py-spy's thread names go stale: it keeps a name per Python thread ident, which a new thread
# reuses once an old one has ended (each batch starts its own threads), so a name is only the
# fallback, for threads never seen at work.
ROLES: tuple[tuple[str, str, str | None], ...] = (
    ("slot (calls the model)", "workers/local.py", "_run_slot"),
    ("decode pool", "workers/ahead.py", "_decode"),
    ("fetch pool", "workers/pipeline.py", "fetch_input"),
    ("lease keeper", "workers/lease.py", "_run"),
    ("submit pool", "jobs/submit/", None),
)
# The same parts by py-spy's names, for threads only ever seen waiting (pool threads never given
# an input); a stale name can misplace one of those, which only moves idle time.
NAMED = {
    "llava-batch-slot": "slot (calls the model)",
    "llava-batch-decode": "decode pool",
    "llava-batch-fetch": "fetch pool",
    "lease-keeper": "lease keeper",
    "MainThread": "main thread",
}
ORDER = (
    "decode",
    "preprocessing",
    "tokenising",
    "generate",
    "claim",
    "record",
    "submit",
    "hand-over",
    "bench setup",
    "bench cleanup",
    "other database",
    "idle",
    "other",
)
_FRAME = re.compile(r"(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"thread \((?P<id>[^)]*)\)(?:: (?P<name>.*))?$")


def _matches(file: str, function: str, fragment: str, name: str | None) -> bool:
    return fragment in file and (name is None or function.rsplit(".", 1)[-1] == name)


def classify(frames: list[str]) -> str:
    """The stage of one stack, given root first as py-spy writes it: ``func (file:line)``."""
    parsed = [m.groups() for m in map(_FRAME.match, frames) if m]
    if not parsed:
        return "other"
    function, file = parsed[-1]
    if any(_matches(file, function, fragment, name) for fragment, name in WAITING):
        return "idle"
    for function, file in reversed(parsed):
        for stage, fragment, name in STAGES:
            if _matches(file, function, fragment, name):
                return stage
    if any(fragment in file for _, file in parsed for fragment in DATABASE):
        return "other database"
    return "other"


Sample = tuple[str, str, list[str], int]  # thread id, thread name ("" if unknown), frames, count


def parse_raw(raw: str) -> list[Sample]:
    """py-spy's ``--format raw --threads`` output: a line per distinct stack, root first
    (``thread (ID): NAME;func (file:line);...``), then its count."""
    samples = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        head = _THREAD.match(frames[0])
        tid, name = (head["id"], head["name"] or "") if head else ("?", "")
        samples.append((tid, name, frames[1:] if head else frames, int(count)))
    return samples


def thread_groups(samples: list[Sample]) -> dict[str, str]:
    """Each thread's group: the main thread (its stack's root is the script), else its part by
    ``ROLES``, else py-spy's name for it without a pool's ``_N``."""
    roles: dict[str, tuple[int, str]] = {}
    for tid, name, frames, _ in samples:
        if frames and frames[0].startswith("<module> "):
            roles[tid] = (-1, "main thread")
            continue
        parsed = [m.groups() for m in map(_FRAME.match, frames) if m]
        for rank, (role, fragment, function) in enumerate(ROLES):
            if any(_matches(file, func, fragment, function) for func, file in parsed):
                roles[tid] = min(roles.get(tid, (rank, role)), (rank, role))
                break
        else:
            fallback = re.sub(r"_\d+$", "", name) or "unnamed"
            fallback = NAMED.get(fallback, fallback)
            roles.setdefault(tid, (len(ROLES), fallback))
    return {tid: role for tid, (_, role) in roles.items()}


def tally(
    samples: list[Sample], groups: dict[str, str]
) -> tuple[Counter[tuple[str, str]], dict[str, set[str]]]:
    """Samples per (thread group, stage), and the thread ids per group."""
    counts: Counter[tuple[str, str]] = Counter()
    threads: dict[str, set[str]] = {}
    for tid, _, frames, count in samples:
        threads.setdefault(groups[tid], set()).add(tid)
        counts[groups[tid], classify(frames)] += count
    return counts, threads


def summarise(
    seen: str, running: str, *, rate: float, window: float, wall: float, cores: int
) -> dict[str, Any]:
    """Seconds per thread group and stage: ``seen`` from the ``--idle`` recorder (where the
    threads were), ``running`` from the other (where the CPU went). ``window``: how long the
    recorders sampled, around the system run's ``wall``."""
    both = parse_raw(seen), parse_raw(running)
    groups_of = thread_groups(both[0] + both[1])
    every, threads = tally(both[0], groups_of)
    busy, more = tally(both[1], groups_of)
    for group, ids in more.items():
        threads.setdefault(group, set()).update(ids)
    groups: dict[str, Any] = {}
    for group in sorted(threads, key=lambda g: -sum(busy[g, s] for s in ORDER)):
        stages = {}
        for stage in ORDER:
            cpu = busy[group, stage] / rate
            # The two recorders sample apart: a stage seen less than it ran is just noise.
            off = max(0.0, every[group, stage] / rate - cpu)
            if cpu or off:
                stages[stage] = {"cpu_s": round(cpu, 3), "off_cpu_s": round(off, 3)}
        groups[group] = {"threads": len(threads[group]), "stages": stages}
    totals = {stage: round(sum(busy[g, stage] for g in threads) / rate, 3) for stage in ORDER}
    return {
        "wall_s": round(wall, 3),
        "window_s": round(window, 3),
        "cores": cores,
        "core_s": round(window * cores, 3),
        "rate": rate,
        "cpu_s_by_stage": {stage: s for stage, s in totals.items() if s},
        "threads": groups,
    }


def render(summary: dict[str, Any]) -> str:
    s = summary
    lines = []
    for group, data in s["threads"].items():
        cpu = sum(v["cpu_s"] for v in data["stages"].values())
        off = sum(v["off_cpu_s"] for v in data["stages"].values())
        lines += [
            f"{group} ({data['threads']} thread(s)): {cpu:.2f} s on CPU, {off:.2f} s off",
            f"  {'stage':<16} {'on CPU s':>9} {'share':>6} {'off CPU s':>10}",
        ]
        for stage, v in data["stages"].items():
            share = 100 * v["cpu_s"] / cpu if cpu else 0.0
            lines.append(f"  {stage:<16} {v['cpu_s']:9.2f} {share:5.0f}% {v['off_cpu_s']:10.2f}")
        lines.append("")
    used = sum(s["cpu_s_by_stage"].values())
    lines += [
        f"all threads: {used:.2f} s on CPU of {s['core_s']:.2f} core-s "
        f"({s['window_s']:.2f} s sampled x {s['cores']} cores; the system run's wall "
        f"{s['wall_s']:.2f} s)",
        f"  {'stage':<16} {'on CPU s':>9} {'of core-s':>9}",
    ]
    for stage, seconds in s["cpu_s_by_stage"].items():
        lines.append(f"  {stage:<16} {seconds:9.2f} {100 * seconds / s['core_s']:8.0f}%")
    spare = s["core_s"] - used
    lines.append(
        f"  {'not this process':<16} {spare:9.2f} {100 * spare / s['core_s']:8.0f}%"
        "  (cores idle, or taken by other processes)"
    )
    return "\n".join(lines)


@contextmanager
def sampled(folder: Path, rate: int) -> Iterator[tuple[Path, Path]]:
    """py-spy on this process, with and without ``--idle``, from before the block to its end;
    yields the two raw output files (written when it ends)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (a bench-only tool)")
    outputs = (folder / "seen.txt", folder / "running.txt")
    recorders = []
    for output, idle in zip(outputs, (["--idle"], []), strict=True):
        log = folder / f"{output.stem}.log"
        command = [py_spy, "record", "--pid", str(os.getpid()), "--threads", "--nonblocking"]
        command += ["--rate", str(rate), "--format", "raw", "-o", str(output), *idle]
        with log.open("wb") as out:
            recorders.append((subprocess.Popen(command, stdout=out, stderr=out), log))
    try:
        for recorder, log in recorders:
            deadline = time.monotonic() + 30
            while b"Sampling process" not in log.read_bytes():
                if recorder.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"py-spy did not start:\n{log.read_text()}")
                time.sleep(0.05)
        yield outputs
    finally:
        for recorder, _ in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder, log in recorders:
            if recorder.wait(60):
                raise SystemExit(f"py-spy failed:\n{log.read_text()}")
            print(log.read_text().strip().splitlines()[-2], file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from catalogue import make_catalogue
    from throughput import warm_up
    from throughput_columns import StubEngine, run_embedded

    from jobs.cores import usable_cores
    from jobs.settings import Settings
    from workers.resources import build_engine_spec, load_transformers_engine

    engine = load_transformers_engine(build_engine_spec(Settings(model=args.model)))
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = Path(tmp) / "images"
        images_dir.mkdir()
        paths = make_catalogue(images_dir, args.items)
        warm_up(engine, paths, args)
        # As the throughput bench does before its system column: warms the path's caches.
        run_embedded(images_dir, StubEngine(getattr(engine, "input_side", None)), args, "stub")
        with sampled(Path(tmp), args.rate) as (seen, running):
            started = time.perf_counter()
            wall = run_embedded(images_dir, engine, args, "system")
            window = time.perf_counter() - started
        summary = summarise(
            seen.read_text(),
            running.read_text(),
            rate=args.rate,
            window=window,
            wall=wall,
            cores=usable_cores(),
        )
    return {
        "items": args.items,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model,
        "load_average": [round(load, 2) for load in os.getloadavg()],
        **summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=288)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    summary = run(args)
    print(
        f"{args.items} catalogue JPEGs, model {args.model}, batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens; load average at the end {summary['load_average']}\n"
    )
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
