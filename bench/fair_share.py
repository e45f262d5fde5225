"""Fair share on the real services: a small job behind a big one, two big jobs side by side,
the cost of one claim at scale, and what a queued million items costs Redis.

    python bench/fair_share.py [--parts small,two,claim,held,redis] [--big 3000] [--small 8]
                               [--small-repeat 3] [--two-items 600] [--sample-interval 1]
                               [--claims 200] [--claim-jobs 100] [--claim-items 1000000]
                               [--explained 21] [--held-jobs 3000] [--held-claims 20]
                               [--redis-items 1000000] [--bell-limit 64]
                               [--skip-old] [--json PATH]

Against the local PostgreSQL (LLAVA_BATCH_BENCH_POSTGRES, default postgresql://postgres@
127.0.0.1:5432/postgres: a fresh database per part, migrated with ``llava-batch db upgrade``,
dropped after) and Redis (LLAVA_BATCH_BENCH_REDIS, default redis://127.0.0.1:6379/0: queues
named for this run, deleted after), with real ``llava-batch worker`` processes (Celery, their
default two slots and sweeper, the tiny offline model ``tiny-llava`` built in a temporary
LLAVA_BATCH_HOME, 8 new tokens, batch 8). Inputs are small generated PNGs (96 px, distinct,
deterministic), so the model's time per item is short and the scheduling shows.

small  One worker. An ``--small``-image caption job alone, timed from ``submit_job`` (called
       here, with the product's publisher) to its row saying it ended (polled every 20 ms),
       after an untimed warm-up job; ``--small-repeat`` times, the median. Then a ``--big``-image
       job through ``llava-batch submit``; once its submit is done and its items are being
       recorded, the same small job again, as many times, while the big one runs. Target: behind
       ≤ max(4 x alone, alone + 15 s). The big job is cancelled after (``llava-batch cancel``).
two    Two workers. Two jobs of ``--two-items`` images, submitted one after the other; each
       job's finished items sampled every ``--sample-interval`` s while they run. Each job's
       rate over the window in which both ran (from the first sample where both had finished
       items to the last where neither was done), and their ratio. Also, as a cross-check, the
       same from the rows' ``finished_at`` (a window from the later job's first finish to the
       earlier job's last). Target: the faster within 25 % of the slower.
claim  ``--claim-jobs`` queued caption jobs of model tiny-llava ({"batch_size": 8,
       "max_new_tokens": 8}) holding ``--claim-items`` queued items between them, written with
       bulk INSERT … SELECT, then ANALYZE; ``jobs.lifecycle.claim_next`` timed ``--claims``
       times (after 5 untimed), each claiming 8 items of the job whose turn it is; each batch
       is then marked succeeded, untimed, as a worker records it, so the items running stay
       one batch. Median and p95 ms; target: median ≤ 5 ms. Side by side, in a rotating order,
       as information: the same claim scoped to one job (``job_id=``: its pick looks at one
       job, not at every open one) and the floor of any transaction through the same session
       factory (pre-ping, BEGIN, SELECT 1, COMMIT). Then ``--explained`` more claims with
       auto_explain (PostgreSQL's contrib module, its plans sent to this client as notices):
       each statement's median time in the database, and the EXPLAIN ANALYZE of the
       statements of the claim whose database time is the median, as run: the pick (UPDATE
       jobs), the item claim (UPDATE items) and the read of what was claimed.
held   ``--held-jobs`` open jobs of one queued item each, written as for claim, and one job of
       priority 5 with a batch for each claim. ``--held-claims`` times, while another
       connection holds the urgent job's row (as a claim beside does, for an instant; released
       here after 0.2 s): a doorbell's ``claim_next``, which must not skip the held row for a
       job of lower priority (I13) and so waits for it; and as many with the row free. Each
       claim's first statement, the pick that skips held rows, timed at the driver: median
       and p95 ms, held against free. Both must take the urgent job's batch. Information: it
       shows whether a held urgent row makes the pick test every job below it.
redis  ``jobs.dispatch.dispatch_items`` for a job of ``--redis-items`` item ids in batches of 8,
       with a real ``CeleryPublisher`` (``--bell-limit``): the queue's LLEN, Redis ``MEMORY
       USAGE`` of its list key (SAMPLES 0: every element) and ``used_memory`` before and after.
       The ids are synthetic: dispatch rings doorbells and touches rows only when the broker
       fails. For comparison (unless ``--skip-old``), the old way in a second queue: one named
       message of 8 ids per batch (``publisher.publish``, pipelined), the same figures.
       Target: the queue holds at most the bell limit.

Everything it creates (databases, queues, the temporary folder, worker and submit processes)
is removed on the way out, also on an error, Ctrl-C or SIGTERM. The machine this was written on
has two cores shared with other work: the figures of ``small`` and ``two`` swing with the load
(printed and recorded), and the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "tiny-llava"
PARTS = ("small", "two", "claim", "held", "redis")
CLI = str(Path(sys.executable).parent / "llava-batch")
TARGET_CLAIM_MS = 5.0
CLAIM_PARAMS = {"batch_size": 8, "max_new_tokens": 8}
TARGET_RATE_SPREAD = 1.25  # the faster job's rate ÷ the slower's
SMALL_FACTOR, SMALL_SLACK_S = 4.0, 15.0


# --- arguments, figures, targets, table: no services needed --------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--big", type=int, default=3000, help="images in the big job (small)")
    parser.add_argument("--small", type=int, default=8, help="images in the small job (small)")
    parser.add_argument("--small-repeat", type=int, default=3, help="small jobs, each way")
    parser.add_argument("--two-items", type=int, default=600, help="images per job (two)")
    parser.add_argument("--sample-interval", type=float, default=1.0, help="seconds (two)")
    parser.add_argument("--claims", type=int, default=200, help="timed claims (claim)")
    parser.add_argument("--claim-jobs", type=int, default=100)
    parser.add_argument("--claim-items", type=int, default=1_000_000, help="over all the jobs")
    parser.add_argument(
        "--explained", type=int, default=21, help="claims run under auto_explain (claim)"
    )
    parser.add_argument("--held-jobs", type=int, default=3000, help="open jobs (held)")
    parser.add_argument("--held-claims", type=int, default=20, help="timed claims, each way")
    parser.add_argument("--redis-items", type=int, default=1_000_000)
    parser.add_argument("--bell-limit", type=int, default=64)
    parser.add_argument("--skip-old", action="store_true", help="redis: no named messages")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a job")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        parser.error(f"--parts takes some of {', '.join(PARTS)}; not {', '.join(unknown)}")
    for name in (
        "big",
        "small",
        "small_repeat",
        "two_items",
        "claims",
        "claim_jobs",
        "explained",
        "held_jobs",
        "held_claims",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.claim_items < args.claim_jobs:
        parser.error("--claim-items must be at least --claim-jobs")
    if args.sample_interval <= 0:
        parser.error("--sample-interval must be positive")
    return args


def small_target(alone_s: float) -> float:
    """The most a small job behind a big one may take: max(4 x alone, alone + 15 s)."""
    return max(SMALL_FACTOR * alone_s, alone_s + SMALL_SLACK_S)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` 0.95 for p95) of non-empty ``values``."""
    ordered = sorted(values)
    rank = math.ceil(round(share * len(ordered), 9))  # 0.95 * 200 is 190.00000000000003
    return ordered[min(len(ordered), max(1, rank)) - 1]


@dataclass
class Sample:
    at: float  # seconds since the second job's submit began
    done: tuple[int, int]  # finished items of the first and second job


def rates_while_both_ran(samples: Sequence[Sample], totals: tuple[int, int]) -> dict[str, Any]:
    """Each job's items/s between the first sample where both had finished items and the last
    where neither was done; None where fewer than two samples fall in that window."""
    both = [
        i
        for i, s in enumerate(samples)
        if all(0 < d < total for d, total in zip(s.done, totals, strict=True))
    ]
    if len(both) < 2:
        return {"window_s": None, "rates": None, "samples_in_window": len(both)}
    first, last = samples[both[0]], samples[both[-1]]
    span = last.at - first.at
    rates = [(last.done[j] - first.done[j]) / span for j in range(2)]
    return {
        "window_s": round(span, 3),
        "window_from_s": round(first.at, 3),
        "rates": [round(rate, 3) for rate in rates],
        "samples_in_window": len(both),
    }


def rates_from_rows(finished: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The same from the rows: two jobs' ``finished_at`` (epoch seconds), counted over the
    window from the later job's first finish to the earlier job's last."""
    if any(not times for times in finished):
        return {"window_s": None, "rates": None}
    start = max(min(times) for times in finished)
    end = min(max(times) for times in finished)
    if end <= start:
        return {"window_s": None, "rates": None}
    rates = [sum(1 for t in times if start < t <= end) / (end - start) for times in finished]
    return {"window_s": round(end - start, 3), "rates": [round(rate, 3) for rate in rates]}


def spread(rates: Sequence[float] | None) -> float | None:
    """The faster rate ÷ the slower (1.0: equal shares); None if unknown or one is zero."""
    if not rates or min(rates) <= 0:
        return None
    return max(rates) / min(rates)


def targets(parts: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks of the parts that ran: name, value, target text, met (None: not measured)."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, target: str, met: bool | None) -> None:
        shown = None if value is None else round(value, 3)
        checks.append({"name": name, "value": shown, "target": target, "met": met})

    if "small" in parts:
        small = parts["small"]
        alone, behind = small.get("alone_s"), small.get("behind_s")
        if alone is None or behind is None:
            check("small job behind a big one (s)", behind, "≤ max(4 x alone, alone + 15 s)", None)
        else:
            bound = small_target(alone)
            met = behind <= bound and small.get("big_still_running", True)
            check("small job behind a big one (s)", behind, f"≤ {bound:.2f} s", met)
    if "two" in parts:
        value = spread(parts["two"].get("sampled", {}).get("rates"))
        check(
            "two big jobs: faster ÷ slower rate",
            value,
            f"≤ {TARGET_RATE_SPREAD}",
            None if value is None else value <= TARGET_RATE_SPREAD,
        )
    if "claim" in parts:
        median = parts["claim"].get("median_ms")
        check(
            "one claim_next (median ms)",
            median,
            f"≤ {TARGET_CLAIM_MS} ms",
            None if median is None else median <= TARGET_CLAIM_MS,
        )
    if "redis" in parts:
        redis = parts["redis"]
        length, limit = redis.get("doorbells", {}).get("llen"), redis.get("bell_limit")
        check(
            "doorbells waiting for a 1M-item job (LLEN)",
            length,
            f"≤ {limit} (the bell limit)",
            None if length is None or limit is None else length <= limit,
        )
    return checks


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _kib(value: int | None) -> str:
    return "—" if value is None else f"{value / 1024:,.1f} KiB"


def rows(parts: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's (figure, value) rows for the parts that ran."""
    out: list[tuple[str, str]] = []
    if "small" in parts:
        s = parts["small"]
        runs = " / ".join(_fmt(v) for v in s.get("alone_runs_s", []))
        out.append(
            (
                f"small: {s['small_items']}-image job alone, s (median; runs)",
                f"{_fmt(s.get('alone_s'))} ({runs})",
            )
        )
        runs = " / ".join(_fmt(v) for v in s.get("behind_runs_s", []))
        out.append(
            (
                f"small: the same behind a {s['big_items']:,}-image job, s (median; runs)",
                f"{_fmt(s.get('behind_s'))} ({runs})",
            )
        )
        ratio = None
        if s.get("alone_s") and s.get("behind_s") is not None:
            ratio = s["behind_s"] / s["alone_s"]
        out.append(("small: behind ÷ alone", _fmt(ratio)))
        out.append(
            (
                "small: big job's finished items at the first / last small submit; "
                "after the cancel",
                f"{_fmt(s.get('big_done_at_first_small'))} / "
                f"{_fmt(s.get('big_done_at_last_small'))}; "
                + ", ".join(f"{k} {v:,}" for k, v in s.get("big_items_at_end", {}).items()),
            )
        )
    if "two" in parts:
        t = parts["two"]
        sampled, from_rows = t.get("sampled", {}), t.get("from_rows", {})
        for label, data in (("sampled", sampled), ("from finished_at", from_rows)):
            rates = data.get("rates")
            shown = "—" if not rates else f"{rates[0]:.2f} / {rates[1]:.2f}"
            out.append(
                (
                    f"two: items/s, first / second job ({label}; window "
                    f"{_fmt(data.get('window_s'), ' s', 1)})",
                    shown,
                )
            )
            ratio = None if not rates or not rates[1] else rates[0] / rates[1]
            out.append((f"two: first ÷ second ({label})", _fmt(ratio)))
    if "claim" in parts:
        c = parts["claim"]
        out.append(
            (
                f"claim: claim_next, {c['jobs']} jobs / {c['items']:,} queued items, "
                f"median / p95 ms ({c['claims']} claims)",
                f"{_fmt(c.get('median_ms'))} / {_fmt(c.get('p95_ms'))}",
            )
        )
        out.append(
            (
                "claim: the same scoped to one job (job_id=, the pick looks at one job), "
                "median / p95 ms",
                f"{_fmt(c.get('scoped_median_ms'))} / {_fmt(c.get('scoped_p95_ms'))}",
            )
        )
        out.append(
            (
                "claim: info: a transaction of one SELECT 1 through the same session factory, "
                "median / p95 ms",
                f"{_fmt(c.get('floor_median_ms'))} / {_fmt(c.get('floor_p95_ms'))}",
            )
        )
        for statement, ms in c.get("in_database_median_ms", {}).items():
            out.append(
                (
                    f"claim: {statement}, in the database (auto_explain; median of "
                    f"{c.get('explained')})",
                    _fmt(ms, " ms", 3),
                )
            )
        out.append(("claim: rows written in (bulk INSERT, ANALYZE)", _fmt(c.get("build_s"), " s")))
    if "held" in parts:
        h = parts["held"]
        for way in ("held", "free"):
            out.append(
                (
                    f"held: the skipping pick, urgent row {way}, {h['jobs']:,} open jobs, "
                    f"median / p95 ms ({h['claims']} claims)",
                    f"{_fmt(h.get(way + '_median_ms'))} / {_fmt(h.get(way + '_p95_ms'))}",
                )
            )
    if "redis" in parts:
        r = parts["redis"]
        for key, label in (("doorbells", "doorbells"), ("old", "named messages (the old way)")):
            data = r.get(key)
            if not data:
                continue
            out.append(
                (
                    f"redis: {r['items']:,} items, {label}: LLEN / MEMORY USAGE",
                    f"{_fmt(data.get('llen'))} / {_kib(data.get('memory_usage'))}",
                )
            )
            out.append(
                (
                    f"redis: {label}: used_memory before → after (Δ); took",
                    f"{_kib(data.get('used_before'))} → {_kib(data.get('used_after'))} "
                    f"(Δ {_kib(data.get('used_after', 0) - data.get('used_before', 0))}); "
                    f"{_fmt(data.get('seconds'), ' s')}",
                )
            )
    return out


def render(summary: dict[str, Any]) -> str:
    """The markdown table, the target checks and the plans, as docs/benchmarks.md shows them."""
    conditions = summary["conditions"]
    lines = [
        f"{conditions['cpus']} CPUs, load average {conditions['load_before']} before, "
        f"{conditions['load_after']} after; model {MODEL}, {summary['max_new_tokens']} new "
        f"tokens, batch {summary['batch_size']}",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {value} |" for label, value in rows(summary["parts"])]
    lines.append("")
    for t in summary["targets"]:
        mark = {True: "✓", False: "✗", None: "?"}[t["met"]]
        lines.append(f"- {mark} {t['name']}: {_fmt(t['value'])} (target {t['target']})")
    for plan in summary["parts"].get("claim", {}).get("plans", []):
        lines += ["", f"EXPLAIN ANALYZE, {plan['statement']}:", "", plan["plan"]]
    return "\n".join(lines)


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


# --- the services: a fresh database, queues and workers, removed on the way out -------------


@dataclass
class Run:
    """What one bench run made, so that everything is removed however it ends."""

    args: argparse.Namespace
    workdir: Path
    pg_server: str
    redis_url: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    databases: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def home(self) -> Path:  # shared by the parts: the tiny checkpoint is built once
        return self.workdir / "home"

    def queue(self, part: str) -> str:
        return f"bench-fs-{self.token}-{part}"

    def create_database(self, part: str) -> str:
        """A fresh database, migrated by ``llava-batch db upgrade``; its SQLAlchemy URL."""
        import psycopg

        name = f"llava_bench_fs_{self.token}_{part}"
        with psycopg.connect(self.pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        url = f"{self.pg_server.rsplit('/', 1)[0]}/{name}"
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        done = subprocess.run(
            [CLI, "db", "upgrade"],
            env=self.env(url, part),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RuntimeError(f"llava-batch db upgrade failed:\n{done.stdout}{done.stderr}")
        return url

    def env(self, db_url: str, part: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            LLAVA_BATCH_HOME=str(self.home),
            LLAVA_BATCH_DATABASE_URL=db_url,
            LLAVA_BATCH_BROKER_URL=self.redis_url,
            LLAVA_BATCH_STORAGE_URL=str(self.workdir / f"blobs-{part}"),
            LLAVA_BATCH_QUEUE=self.queue(part),
            LLAVA_BATCH_MODEL=MODEL,
            LLAVA_BATCH_MAX_NEW_TOKENS=str(self.args.max_new_tokens),
            LLAVA_BATCH_BATCH_SIZE=str(self.args.batch_size),
            LLAVA_BATCH_DOORBELLS=str(self.args.bell_limit),
            LLAVA_BATCH_METRICS_PORT="0",  # other workers on this host keep their ports
        )
        return env

    def spawn(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        # A session of its own: a Ctrl-C at the terminal reaches this process, which then
        # stops its children in order, rather than every worker at once mid-measurement.
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_workers(self, env: dict[str, str], count: int, part: str) -> list[Path]:
        logs = [self.workdir / f"{part}-worker{i}.log" for i in range(count)]
        procs = [self.spawn([CLI, "worker", "--loglevel", "INFO"], env, log) for log in logs]
        deadline = time.monotonic() + 600  # the first start builds the tiny checkpoint
        for proc, log in zip(procs, logs, strict=True):
            while "worker ready" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
        return logs

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in list(self.processes):
            self.stop(process)

    def cleanup(self) -> None:
        self.stop_all()
        import psycopg
        import redis

        for name in self.databases:
            try:
                with psycopg.connect(self.pg_server, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # the rest still goes
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
        self.databases.clear()
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"*bench-fs-{self.token}-*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextmanager
def bench_run(args: argparse.Namespace) -> Iterator[Run]:
    """A Run in a temporary folder; on leaving (an error, Ctrl-C or SIGTERM included), its
    processes stopped, databases dropped, queues deleted and folder removed."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fair-share-"))
        run = Run(
            args=args,
            workdir=Path(tmp),
            pg_server=os.environ.get(
                "LLAVA_BATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
            ),
            redis_url=os.environ.get("LLAVA_BATCH_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
        )
        stack.callback(run.cleanup)
        try:
            yield run
        finally:
            signal.signal(signal.SIGTERM, previous)


# --- inputs, submitting and watching jobs ---------------------------------------------------


def make_images(folder: Path, count: int, *, offset: int = 0) -> Path:
    """``count`` distinct 96 px PNGs (a colour field and a rectangle, set by the index)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(offset, offset + count):
        image = Image.new("RGB", (96, 96), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
        x, y = (i * 7) % 60, (i * 13) % 60
        ImageDraw.Draw(image).rectangle((x, y, x + 30, y + 30), fill=((i * 11) % 256, 40, 200))
        image.save(folder / f"i{i:06d}.png")
    return folder


class Jobs:
    """Submits in this process and reads jobs' progress from the database."""

    def __init__(self, run: Run, db_url: str, part: str) -> None:
        from jobs.db import make_engine, make_session_factory
        from jobs.dispatch import CeleryPublisher
        from jobs.settings import Settings
        from storage import open_blobs

        self.run, self.env = run, run.env(db_url, part)
        self.settings = Settings.from_env(
            home=run.home,
            database_url=db_url,
            broker_url=run.redis_url,
            storage_url=self.env["LLAVA_BATCH_STORAGE_URL"],
            queue=run.queue(part),
            model=MODEL,
            message_size=run.args.batch_size,
            max_new_tokens=run.args.max_new_tokens,
            doorbells=run.args.bell_limit,
        )
        self.engine = make_engine(db_url)
        self.sf = make_session_factory(self.engine)
        self.blobs = open_blobs(self.settings.resolved_storage_url)
        self.publisher = CeleryPublisher.for_settings(self.settings)

    def submit(self, folder: Path) -> str:
        from jobs.submit.job import submit_job
        from jobs.submit.request import SubmitRequest

        request = SubmitRequest.of(
            "caption",
            [str(folder)],
            MODEL,
            max_new_tokens=self.run.args.max_new_tokens,
            batch_size=self.run.args.batch_size,
        )
        result = submit_job(
            request,
            session_factory=self.sf,
            blobs=self.blobs,
            publisher=self.publisher,
            max_prompt_chars=self.settings.max_prompt_chars,
        )
        return result.job_id

    def submit_cli(self, folder: Path, log: Path) -> subprocess.Popen[bytes]:
        command = [CLI, "submit", "caption", str(folder), "--json"]
        command += ["--max-new-tokens", str(self.run.args.max_new_tokens)]
        command += ["--batch-size", str(self.run.args.batch_size)]
        return self.run.spawn(command, self.env, log)

    def status(self, job_id: str) -> str:
        from sqlalchemy import select

        from jobs.db import Job

        with self.sf() as session:
            return str(session.scalar(select(Job.status).where(Job.id == job_id)))

    def done(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Items a worker finished (succeeded or failed; not cancelled nor expired), per job."""
        from sqlalchemy import func, select

        from jobs.db import Item
        from jobs.states import ItemStatus

        with self.sf() as session:
            counts = session.execute(
                select(Item.job_id, func.count())
                .where(
                    Item.job_id.in_(job_ids),
                    Item.status.in_([ItemStatus.succeeded, ItemStatus.failed]),
                )
                .group_by(Item.job_id)
            ).all()
        found = {job_id: int(n) for job_id, n in counts}
        return {job_id: found.get(job_id, 0) for job_id in job_ids}

    def counts(self, job_id: str) -> dict[str, int]:
        """The job's items per status."""
        from sqlalchemy import func, select

        from jobs.db import Item

        with self.sf() as session:
            rows = session.execute(
                select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
            ).all()
        return {str(status): int(n) for status, n in rows}

    def finished_times(self, job_id: str) -> list[float]:
        from sqlalchemy import select

        from jobs.db import Item

        with self.sf() as session:
            times = session.scalars(
                select(Item.finished_at).where(Item.job_id == job_id, Item.finished_at.is_not(None))
            ).all()
        return sorted(t.timestamp() for t in times if t is not None)

    def wait_until(self, job_id: str, states: Callable[[str], bool], poll: float = 0.02) -> str:
        deadline = time.monotonic() + self.run.args.timeout
        while True:
            status = self.status(job_id)
            if states(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {self.run.args.timeout} s")
            time.sleep(poll)

    def wait_ended(self, job_id: str, poll: float = 0.02) -> str:
        from jobs.states import TERMINAL_JOB_STATES

        return self.wait_until(job_id, lambda s: s in TERMINAL_JOB_STATES, poll)

    def timed_small(self, folder: Path) -> float:
        start = time.perf_counter()
        job_id = self.submit(folder)
        status = self.wait_ended(job_id)
        took = time.perf_counter() - start
        if status != "completed":
            raise RuntimeError(f"the small job ended {status}")
        return took

    def close(self) -> None:
        self.engine.dispose()


# --- the parts ------------------------------------------------------------------------------


def part_small(run: Run) -> dict[str, Any]:
    args = run.args
    db_url = run.create_database("small")
    jobs = Jobs(run, db_url, "small")
    try:
        small = make_images(run.workdir / "small-images", args.small)
        warm = make_images(run.workdir / "warm-images", 2 * args.batch_size, offset=900_000)
        started = time.perf_counter()
        big = make_images(run.workdir / "big-images", args.big, offset=100_000)
        print(f"small: {args.big} images made in {time.perf_counter() - started:.1f} s")
        [worker_log] = run.start_workers(jobs.env, 1, "small")
        jobs.timed_small(warm)  # untimed: the worker's and this process's first calls
        alone = [jobs.timed_small(small) for _ in range(args.small_repeat)]
        print(f"small: alone {', '.join(f'{t:.2f}' for t in alone)} s")

        submit_log = run.workdir / "big-submit.log"
        started = time.perf_counter()
        submitter = jobs.submit_cli(big, submit_log)
        if submitter.wait(args.timeout) != 0:
            raise RuntimeError(f"big submit failed:\n{submit_log.read_text()[-4000:]}")
        big_id = json.loads(submit_log.read_text().strip().splitlines()[-1])["job_id"]
        print(f"small: big job {big_id} submitted in {time.perf_counter() - started:.1f} s")
        # Running: its items are being recorded, so the worker is in full flow on it.
        deadline = time.monotonic() + args.timeout
        while jobs.done([big_id])[big_id] < 2 * args.batch_size:
            if time.monotonic() > deadline:
                raise TimeoutError("the big job did not start")
            time.sleep(0.05)
        behind, big_done = [], []
        for _ in range(args.small_repeat):
            big_done.append(jobs.done([big_id])[big_id])
            behind.append(jobs.timed_small(small))
        big_after = jobs.done([big_id])[big_id]
        still_running = jobs.status(big_id) == "in_progress" and big_after < args.big
        print(f"small: behind {', '.join(f'{t:.2f}' for t in behind)} s")
        subprocess.run(
            [CLI, "cancel", big_id], env=jobs.env, check=True, capture_output=True, timeout=120
        )
        status = jobs.wait_ended(big_id, poll=0.2)
        if "Traceback" in worker_log.read_text(errors="replace"):
            print(f"small: the worker logged a traceback; see below\n{worker_log.read_text()}")
        return {
            "small_items": args.small,
            "big_items": args.big,
            "alone_runs_s": [round(t, 3) for t in alone],
            "behind_runs_s": [round(t, 3) for t in behind],
            "alone_s": round(statistics.median(alone), 3),
            "behind_s": round(statistics.median(behind), 3),
            "big_done_at_first_small": big_done[0],
            "big_done_at_last_small": big_done[-1],
            "big_done_after_last_small": big_after,
            "big_items_at_end": jobs.counts(big_id),
            "big_still_running": still_running,
            "big_final_status": status,
        }
    finally:
        run.stop_all()
        jobs.close()


def part_two(run: Run) -> dict[str, Any]:
    args = run.args
    db_url = run.create_database("two")
    jobs = Jobs(run, db_url, "two")
    try:
        n = args.two_items
        first = make_images(run.workdir / "two-a", n, offset=200_000)
        second = make_images(run.workdir / "two-b", n, offset=300_000)
        warm = make_images(run.workdir / "two-warm", 4 * args.batch_size, offset=910_000)
        run.start_workers(jobs.env, 2, "two")
        jobs.wait_ended(jobs.submit(warm))  # untimed: first calls, both workers' models
        start = time.perf_counter()
        ids = [jobs.submit(first)]
        submitted_first = time.perf_counter() - start
        ids.append(jobs.submit(second))
        submitted_second = time.perf_counter() - start
        print(f"two: submitted at {submitted_first:.1f} s and {submitted_second:.1f} s")
        samples: list[Sample] = []
        deadline = time.monotonic() + args.timeout
        while True:
            done = jobs.done(ids)
            samples.append(Sample(time.perf_counter() - start, (done[ids[0]], done[ids[1]])))
            if all(d >= n for d in done.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"two: jobs not done after {args.timeout} s: {done}")
            time.sleep(args.sample_interval)
        statuses = [jobs.wait_ended(job_id) for job_id in ids]
        sampled = rates_while_both_ran(samples, (n, n))
        from_rows = rates_from_rows([jobs.finished_times(job_id) for job_id in ids])
        print(f"two: sampled {sampled}; from rows {from_rows}")
        return {
            "items_per_job": n,
            "workers": 2,
            "submitted_s": [round(submitted_first, 3), round(submitted_second, 3)],
            "ended_s": round(samples[-1].at, 3),
            "statuses": statuses,
            "sampled": sampled,
            "from_rows": from_rows,
            "samples": [[round(s.at, 3), *s.done] for s in samples],
        }
    finally:
        run.stop_all()
        jobs.close()


def build_claim_rows(sf: Any, jobs: int, items: int) -> None:
    """``jobs`` queued caption jobs of MODEL with ``items`` queued items spread over them."""
    from sqlalchemy import text

    with sf.begin() as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at, priority) "
                "SELECT gen_random_uuid()::text, 'caption', 'queued', "
                "CAST(:params AS jsonb), :model, "
                "now() - make_interval(secs => :jobs - g), 0 "
                "FROM generate_series(1, :jobs) AS g"
            ),
            {"model": MODEL, "jobs": jobs, "params": json.dumps(CLAIM_PARAMS)},
        )
        # Job number k (by created_at) gets items (k-1)*per .. ; the last takes the rest.
        session.execute(
            text(
                "WITH numbered AS (SELECT id, row_number() OVER (ORDER BY created_at) - 1 AS k "
                "FROM jobs) "
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at, dispatched_at) "
                "SELECT gen_random_uuid()::text, n.id, g, 'img/' || g || '.png', "
                "'file:///bench/' || n.k || '/' || g || '.png', 'queued', 0, 0, now(), now() "
                "FROM numbered AS n, generate_series(0, "
                "CASE WHEN n.k = :jobs - 1 THEN :items - (:jobs - 1) * (:items / :jobs) "
                "ELSE :items / :jobs END - 1) AS g"
            ),
            {"jobs": jobs, "items": items},
        )
    with sf.begin() as session:
        session.execute(text("ANALYZE jobs"))
        session.execute(text("ANALYZE items"))


def record_batch(sf: Any, token: str) -> None:
    """Marks a claimed batch succeeded, untimed, as a worker records it: the items running stay
    one batch (a fleet's in flight), not every item claimed so far."""
    from sqlalchemy import text

    with sf.begin() as session:
        session.execute(
            text(
                "UPDATE items SET status = 'succeeded', finished_at = now(), "
                "lease_expires_at = NULL WHERE lease_token = :t AND status = 'running'"
            ),
            {"t": token},
        )


def classify(plan: str) -> str:
    """Which of claim_next's statements an auto_explain plan is of."""
    head = plan.split("\n  ->", 1)[0]  # the query text and the plan's top node
    if "UPDATE jobs SET" in head:
        return "the pick (UPDATE jobs)"
    if "UPDATE items SET" in head:
        return "the item claim (UPDATE items)"
    if plan.startswith("Query Text: SELECT"):
        return "the read of what was claimed (SELECT)"
    return "other"


def explain_claims(
    db_url: str, serving: Any, count: int, finish: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``count`` claim_next calls with auto_explain on their connection (every statement's
    EXPLAIN ANALYZE, as run, sent here as a notice). Returns the plans of the claim whose
    database time is the median, and each statement's median duration in the database."""
    from sqlalchemy import event

    from jobs.db import make_engine, make_session_factory
    from jobs.lifecycle import claim_next

    notices: list[str] = []
    engine = make_engine(db_url)

    @event.listens_for(engine, "connect")
    def _explain(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        with dbapi_connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            for setting in (
                "log_min_duration = 0",
                "log_analyze = on",
                "log_buffers = on",
                "log_timing = on",
                "log_level = notice",
            ):
                cursor.execute(f"SET auto_explain.{setting}")
        dbapi_connection.commit()  # the SETs outlive the pool's rollback

    claims: list[list[dict[str, Any]]] = []
    try:
        sf = make_session_factory(engine)
        for _ in range(count):
            notices.clear()
            claimed = claim_next(sf, worker="bench-explain", lease_seconds=600, serving=serving)
            if not claimed:
                raise RuntimeError("an explained claim took nothing")
            finish(claimed[0].lease_token)
            explained: list[dict[str, Any]] = []
            for notice in notices:
                head, _, body = notice.partition("plan:")
                duration = re.search(r"duration: ([0-9.]+) ms", head)
                explained.append(
                    {
                        "statement": classify(body.strip()),
                        "duration_ms": float(duration.group(1)) if duration else None,
                        "plan": body.strip(),
                    }
                )
            claims.append(explained)
    finally:
        engine.dispose()

    def total(plans: list[dict[str, Any]]) -> float:
        return sum(p["duration_ms"] or 0.0 for p in plans)

    ordered = sorted(claims, key=total)
    durations: dict[str, list[float]] = {}
    for explained in claims:
        for one in explained:
            if one["duration_ms"] is not None:
                durations.setdefault(one["statement"], []).append(one["duration_ms"])
    medians = {name: round(statistics.median(ms), 3) for name, ms in durations.items()}
    return ordered[len(ordered) // 2], medians


def part_claim(run: Run) -> dict[str, Any]:
    from sqlalchemy import text

    from jobs.db import make_engine, make_session_factory
    from jobs.fleet import Serving
    from jobs.lifecycle import claim_next

    args = run.args
    db_url = run.create_database("claim")
    engine = make_engine(db_url)
    try:
        sf = make_session_factory(engine)
        started = time.perf_counter()
        build_claim_rows(sf, args.claim_jobs, args.claim_items)
        build_s = time.perf_counter() - started
        print(f"claim: {args.claim_jobs} jobs, {args.claim_items:,} items in {build_s:.1f} s")
        serving = Serving(MODEL, None, "none")
        with sf() as session:
            job_ids = list(session.scalars(text("SELECT id FROM jobs ORDER BY created_at")))
        timings: dict[str, list[float]] = {"any": [], "scoped": [], "floor": []}

        def finish(token: str) -> None:
            record_batch(sf, token)

        def floor() -> None:
            with sf.begin() as session:
                session.execute(text("SELECT 1"))

        # Side by side, in a rotating order: the doorbell's claim (its pick looks at every
        # open job); the same scoped to one job (``job_id=``, as the one-process runner
        # claims; a job after another), whose pick looks at that job only; and the floor of
        # any transaction through the same session factory (pre-ping, BEGIN, one SELECT 1,
        # COMMIT), the round trips that this machine's load makes slow.
        ways = ("any", "scoped", "floor")
        for i in range(5 + args.claims):
            for way in ways[i % 3 :] + ways[: i % 3]:
                t = time.perf_counter()
                if way == "floor":
                    floor()
                    claimed = []
                else:
                    claimed = claim_next(
                        sf,
                        worker="bench",
                        lease_seconds=600,
                        serving=serving,
                        job_id=job_ids[i % len(job_ids)] if way == "scoped" else None,
                    )
                took = (time.perf_counter() - t) * 1000
                if way != "floor":
                    if len(claimed) != CLAIM_PARAMS["batch_size"]:
                        raise RuntimeError(f"claim {i} ({way}) took {len(claimed)} items")
                    finish(claimed[0].lease_token)
                if i >= 5:
                    timings[way].append(took)
        plans, in_database = explain_claims(db_url, serving, args.explained, finish)
        scoped = timings["scoped"]
        timings_any = timings["any"]
        return {
            "jobs": args.claim_jobs,
            "items": args.claim_items,
            "claims": args.claims,
            "build_s": round(build_s, 2),
            "median_ms": round(statistics.median(timings_any), 3),
            "p95_ms": round(percentile(timings_any, 0.95), 3),
            "min_ms": round(min(timings_any), 3),
            "max_ms": round(max(timings_any), 3),
            "scoped_median_ms": round(statistics.median(scoped), 3),
            "scoped_p95_ms": round(percentile(scoped, 0.95), 3),
            "floor_median_ms": round(statistics.median(timings["floor"]), 3),
            "floor_p95_ms": round(percentile(timings["floor"], 0.95), 3),
            "explained": args.explained,
            "in_database_median_ms": in_database,
            "plans": plans,
        }
    finally:
        engine.dispose()


def _is_pick(statement: str) -> bool:
    """Whether the SQL is claim_next's pick: the UPDATE of jobs that stamps a turn."""
    return statement.startswith("UPDATE jobs SET") and "turn_at=" in statement


def part_held(run: Run) -> dict[str, Any]:
    from sqlalchemy import event, text

    from jobs.db import make_engine, make_session_factory
    from jobs.fleet import Serving
    from jobs.lifecycle import claim_next

    args = run.args
    db_url = run.create_database("held")
    engine = make_engine(db_url)
    batch = int(CLAIM_PARAMS["batch_size"])
    try:
        sf = make_session_factory(engine)
        # One item for each job but the newest, which takes the rest: a batch per claim.
        urgent_items = batch * (2 * args.held_claims + 2)
        build_claim_rows(sf, args.held_jobs, args.held_jobs - 1 + urgent_items)
        with sf.begin() as session:
            urgent = session.scalar(text("SELECT id FROM jobs ORDER BY created_at DESC LIMIT 1"))
            session.execute(text("UPDATE jobs SET priority = 5 WHERE id = :u"), {"u": urgent})
        serving = Serving(MODEL, None, "none")
        picks: list[float] = []
        started: list[float] = []

        @event.listens_for(engine, "before_cursor_execute")
        def _before(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
            if _is_pick(statement):
                started.append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def _after(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
            if _is_pick(statement):
                picks.append((time.perf_counter() - started[-1]) * 1000)

        timings: dict[str, list[float]] = {"held": [], "free": []}
        for i in range(2 * args.held_claims + 2):
            way = ("held", "free")[i % 2]
            holder = engine.connect()
            held = holder.begin()
            if way == "held":
                holder.execute(text("SELECT id FROM jobs WHERE id = :u FOR UPDATE"), {"u": urgent})
            release = threading.Timer(0.2, held.rollback)
            release.start()
            picks.clear()
            claimed = claim_next(sf, worker="bench-held", lease_seconds=600, serving=serving)
            release.join()
            holder.close()
            if {c.job_id for c in claimed} != {urgent}:
                raise RuntimeError(f"claim {i} ({way}) did not take the urgent job's batch")
            record_batch(sf, claimed[0].lease_token)
            if i >= 2:
                timings[way].append(picks[0])
        return {
            "jobs": args.held_jobs,
            "claims": args.held_claims,
            **{
                f"{way}_{name}": round(value, 3)
                for way, ms in timings.items()
                for name, value in (
                    ("median_ms", statistics.median(ms)),
                    ("p95_ms", percentile(ms, 0.95)),
                )
            },
        }
    finally:
        engine.dispose()


class SyntheticIds(Sequence[str]):
    """``count`` item ids of a real id's length (36 characters), made when asked for."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return f"00000000-0000-4000-8000-{index % self._count:012x}"


def queue_figures(client: Any, key: str, used_before: int, seconds: float) -> dict[str, Any]:
    return {
        "llen": int(client.llen(key)),
        "memory_usage": client.memory_usage(key, samples=0),
        "used_before": used_before,
        "used_after": int(client.info("memory")["used_memory"]),
        "seconds": round(seconds, 3),
    }


def part_redis(run: Run) -> dict[str, Any]:
    import redis
    from sqlalchemy import create_engine

    from jobs.db import make_session_factory, new_id, utcnow
    from jobs.dispatch import CeleryPublisher, dispatch_items
    from jobs.fleet import queue_for

    args = run.args
    ids = SyntheticIds(args.redis_items)
    client = redis.Redis.from_url(run.redis_url)
    # dispatch_items touches rows only to undo a failed ring; none here (rows are not needed).
    unused = create_engine("sqlite://")
    try:
        new = CeleryPublisher(run.redis_url, run.queue("redis"), bell_limit=args.bell_limit)
        key = queue_for(new.queue, MODEL)
        used = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        rang = dispatch_items(
            make_session_factory(unused),
            new,
            new_id(),
            ids,
            model=MODEL,
            batch_size=args.batch_size,
            stamp=utcnow(),
        )
        if not rang:
            raise RuntimeError("the doorbells did not go out")
        result: dict[str, Any] = {
            "items": args.redis_items,
            "batch_size": args.batch_size,
            "bell_limit": args.bell_limit,
            "doorbells": queue_figures(client, key, used, time.perf_counter() - started),
        }
        print(f"redis: doorbells {result['doorbells']}")
        client.delete(key)
        if not args.skip_old:
            old = CeleryPublisher(run.redis_url, run.queue("redis-old"))
            key = queue_for(old.queue, MODEL)
            job_id, stamp, size = new_id(), utcnow(), args.batch_size
            used = int(client.info("memory")["used_memory"])
            started = time.perf_counter()
            with old.batched():
                for begin in range(0, len(ids), size):
                    old.publish(job_id, ids[begin : begin + size], model=MODEL, dispatched_at=stamp)
            result["old"] = queue_figures(client, key, used, time.perf_counter() - started)
            result["old"]["messages"] = -(-len(ids) // size)
            print(f"redis: named messages {result['old']}")
            client.delete(key)
        return result
    finally:
        unused.dispose()
        client.close()


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runners = {
        "small": part_small,
        "two": part_two,
        "claim": part_claim,
        "held": part_held,
        "redis": part_redis,
    }
    load_before = [round(load, 2) for load in os.getloadavg()]
    parts: dict[str, Any] = {}
    with bench_run(args) as run:
        for part in args.parts:
            started = time.perf_counter()
            print(f"--- {part}", flush=True)
            parts[part] = runners[part](run)
            parts[part]["bench_seconds"] = round(time.perf_counter() - started, 1)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "code": str(ROOT),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "conditions": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": [round(load, 2) for load in os.getloadavg()],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        },
        "parts": parts,
        "targets": targets(parts),
    }
    print(render(summary))
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
