"""Costs flat in a job's size (issue 28): record, results, retry and cancel of a job of a million
items, on PostgreSQL, before the planner has statistics of it and after.

    python bench/history_scale.py [--items 1000000] [--reps 30] [--parts record,results,retry,
                                  cancel] [--results-limit 600] [--url postgresql://...]

A throwaway database on the server at ``--url`` (default LLAVA_BATCH_BENCH_POSTGRES, else
postgresql://postgres@127.0.0.1:5432/postgres), migrated, dropped after. Every job is written
with one INSERT … SELECT over generate_series (not through the CLI), all into the same tables,
with autovacuum off on them: what the planner knows is what each row below says ("no stats":
never analysed, as a job submitted a moment ago; "analysed": after ANALYZE). The code measured
is that of LLAVA_BATCH_BENCH_ROOT (default: this checkout), so the same script measures an
older checkout.

record   a job of ``--items`` queued items: ``record_results`` of a batch of 8 (claimed first,
         untimed), ``--reps`` times, no stats, then analysed; median and p90 ms. It includes
         the "job finished?" probe. Target: ≤ 5 ms either way. Beside it, as information: the
         probe alone, and an empty transaction (the floor of any of the two a record runs).
results  a job of ``--items`` succeeded items: ``jobs.cli.views.write_results`` (what
         ``llava-batch results JOB -o FILE`` runs) in jsonl to a file, no stats, then analysed.
         Stopped after ``--results-limit`` s (the items written by then are shown). Target:
         ≤ 60 s, linear.
retry    a job of ``--items`` failed items: ``jobs.control.retry_job`` (requeue, then the
         doorbells, to a publisher that keeps nothing). Target: ≤ 60 s.
cancel   a job of ``--items`` queued items: ``jobs.control.cancel_job``, while another
         connection takes the job row (SELECT … FOR UPDATE, then COMMIT) over and over: the
         longest it waited is the longest the cancel held the row. Target: ≤ 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(os.environ.get("LLAVA_BATCH_BENCH_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from jobs.db import SessionFactory, make_engine, make_session_factory, new_id  # noqa: E402
from jobs.migrate import upgrade_database  # noqa: E402

DEFAULT_URL = os.environ.get(
    "LLAVA_BATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PARTS = ("record", "results", "retry", "cancel")


def make_job(engine: Engine, items: int, *, item_status: str, job_status: str) -> str:
    """A caption job of ``items`` rows in ``item_status``, seqs 0…n-1, written in one
    INSERT … SELECT; returns its id."""
    job_id = new_id()
    finished = item_status not in ("queued", "running")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at, started_at, "
                "turn_at, priority, keep_inputs) VALUES (:id, 'caption', :status, "
                "'{\"batch_size\": 8, \"max_new_tokens\": 8}', 'bench', now(), now(), "
                "'1970-01-01', 0, false)"
            ),
            {"id": job_id, "status": job_status},
        )
        conn.execute(
            text(
                "INSERT INTO items (id, job_id, seq, custom_id, source, input_uri, status, "
                "attempts, transient_failures, created_at, finished_at, result_text, "
                "error_code, error_message, prompt_tokens, completion_tokens, finish_reason) "
                "WITH p AS (SELECT CAST(:status AS text) AS status, "
                "CAST(:finished AS boolean) AS done, CAST(:status AS text) = 'failed' AS bad, "
                "CAST(:status AS text) = 'succeeded' AS ok) "
                "SELECT gen_random_uuid()::text, :job, g, 'row-' || g, "
                "'s3://bench/in/' || g || '.png', 's3://bench/in/' || g || '.png', p.status, "
                "CASE WHEN p.done THEN 1 ELSE 0 END, 0, now(), CASE WHEN p.done THEN now() END, "
                "CASE WHEN p.ok THEN 'a small caption of item ' || g END, "
                "CASE WHEN p.bad THEN 'storage_unavailable' END, "
                "CASE WHEN p.bad THEN 'Storage did not answer.' END, "
                "CASE WHEN p.ok THEN 600 END, CASE WHEN p.ok THEN 12 END, "
                "CASE WHEN p.ok THEN 'stop' END "
                "FROM p, generate_series(0, :n - 1) AS g"
            ),
            {"job": job_id, "n": items, "status": item_status, "finished": finished},
        )
    return job_id


def analyse(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("ANALYZE items"))
        conn.execute(text("ANALYZE jobs"))
        conn.commit()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --- record -------------------------------------------------------------------------------------


def bench_record(sf: SessionFactory, job_id: str, reps: int, *, skip: int) -> list[float]:
    """``record_results`` of a batch of 8, ``reps`` times (after one untimed): seconds each."""
    from jobs.lifecycle import ItemOutcome, claim_items, record_results
    from jobs.outcome import Outcome

    with sf() as session:
        ids = [
            row[0]
            for row in session.execute(
                text("SELECT id FROM items WHERE job_id = :job AND seq >= :skip AND seq < :end"),
                {"job": job_id, "skip": skip, "end": skip + (reps + 1) * 8},
            )
        ]
    timings = []
    for rep in range(reps + 1):
        claimed = claim_items(sf, ids[rep * 8 : rep * 8 + 8], worker="bench", lease_seconds=600)
        outcomes = [
            ItemOutcome(c.id, c.lease_token, Outcome(text="a caption", tokens_out=3))
            for c in claimed
        ]
        start = time.perf_counter()
        assert record_results(sf, outcomes) == len(claimed) == 8
        if rep:
            timings.append(time.perf_counter() - start)
    return timings


def bench_floor(sf: SessionFactory, job_id: str, reps: int) -> tuple[list[float], list[float]]:
    """Beside a record, as information: the "job finished?" probe alone, and an empty
    transaction through the same session factory (pre-ping, BEGIN, SELECT 1, COMMIT)."""
    from jobs.lifecycle import jobs_ready_to_finalise

    probes, empties = [], []
    for _ in range(reps):
        start = time.perf_counter()
        jobs_ready_to_finalise(sf, among=[job_id])
        probes.append(time.perf_counter() - start)
        start = time.perf_counter()
        with sf.begin() as session:
            session.execute(text("SELECT 1"))
        empties.append(time.perf_counter() - start)
    return probes, empties


def report_floor(sf: SessionFactory, job_id: str, reps: int, report: Callable[[str], None]) -> None:
    probes, empties = bench_floor(sf, job_id, reps)
    report(f"  the probe alone: {summary(probes)}")
    report(f"  an empty transaction: {summary(empties)}")


def summary(timings: Sequence[float]) -> str:
    ordered = sorted(timings)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return f"median {ms(statistics.median(ordered))}, p90 {ms(p90)} ({len(ordered)} runs)"


# --- results ------------------------------------------------------------------------------------


class _Deadline(Exception):
    pass


class _Counting:
    """A file that counts lines and stops the export once ``limit`` seconds have passed."""

    def __init__(self, stream: IO[str], limit: float) -> None:
        self._stream = stream
        self._deadline = time.perf_counter() + limit
        self.lines = 0

    def write(self, data: str) -> int:
        self.lines += data.count("\n")
        if self.lines % 1000 == 0 and time.perf_counter() > self._deadline:
            raise _Deadline
        return self._stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def bench_results(sf: SessionFactory, job_id: str, out: Path, limit: float) -> str:
    """``write_results`` as ``llava-batch results JOB -o out`` runs it; stopped at ``limit``."""
    from jobs.cli import views

    opened: list[_Counting] = []
    real_open = views._open_output

    def counting_open(path: str) -> Any:
        stream = _Counting(real_open(path), limit)
        opened.append(stream)
        return _Closing(stream)

    views._open_output = counting_open  # type: ignore[assignment]
    start = time.perf_counter()
    try:
        with sf() as session:
            views.write_results(session, job_id, views.ResultFormat.jsonl, str(out))
        took = time.perf_counter() - start
        return f"{took:.1f} s, {opened[0].lines} items ({opened[0].lines / took:,.0f}/s)"
    except _Deadline:
        took = time.perf_counter() - start
        return f"stopped after {took:.0f} s with {opened[0].lines} items written"
    finally:
        views._open_output = real_open  # type: ignore[assignment]


class _Closing:
    def __init__(self, stream: _Counting) -> None:
        self._stream = stream

    def __enter__(self) -> _Counting:
        return self._stream

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


# --- retry --------------------------------------------------------------------------------------


class NullPublisher:
    """A broker that takes every doorbell and keeps nothing."""

    bell_limit = 64

    def ring(self, model: str, count: int, **_: Any) -> None:
        pass

    def waiting(self, model: str) -> int | None:
        return 0

    def publish(self, job_id: str, item_ids: Sequence[str], **_: Any) -> None:
        pass

    def oldest_waiting(self, model: str) -> datetime | None:
        return None


def bench_retry(sf: SessionFactory, job_id: str) -> str:
    from jobs.control import retry_job

    start = time.perf_counter()
    try:
        result = retry_job(sf, NullPublisher(), job_id, batch_size=8)  # type: ignore[arg-type]
    except Exception as exc:  # the old code's failure is a figure too
        took = time.perf_counter() - start
        return f"failed after {took:.1f} s: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    took = time.perf_counter() - start
    return f"{took:.1f} s, {len(result.item_ids)} items requeued"


# --- cancel -------------------------------------------------------------------------------------


def bench_cancel(sf: SessionFactory, dsn: str, job_id: str) -> str:
    """Cancels the job while another connection takes its row over and over; the longest
    wait of that connection is the longest the cancel held the row."""
    from jobs.control import cancel_job

    done = threading.Event()
    outcome: dict[str, Any] = {}

    def cancel() -> None:
        start = time.perf_counter()
        try:
            outcome["status"] = cancel_job(sf, job_id)
        except Exception as exc:
            outcome["status"] = f"error: {exc}"
        outcome["took"] = time.perf_counter() - start
        done.set()

    waits: list[float] = []
    with psycopg.connect(dsn) as probe:
        thread = threading.Thread(target=cancel)
        thread.start()
        while not done.is_set():
            start = time.perf_counter()
            probe.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            probe.commit()
            waits.append(time.perf_counter() - start)
            time.sleep(0.002)
        thread.join()
    return (
        f"{outcome['took']:.1f} s in all, ends {outcome['status']}; job row held at most "
        f"{ms(max(waits))} ({len(waits)} takes of it, median wait {ms(statistics.median(waits))})"
    )


# --- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, report: Callable[[str], None]) -> None:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}")
    name = f"llava_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    base = args.url.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    engine = make_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        upgrade_database(engine)
        sf = make_session_factory(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE items SET (autovacuum_enabled = false)"))
            conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        n = args.items
        report(f"code: {ROOT}; {n:,} items per job; PostgreSQL {base}")
        built = time.perf_counter()
        jobs = {
            "record": ("queued", "in_progress"),
            "results": ("succeeded", "completed"),
            "retry": ("failed", "failed"),
            "cancel": ("queued", "in_progress"),
        }
        ids = {
            part: make_job(engine, n, item_status=jobs[part][0], job_status=jobs[part][1])
            for part in parts
        }
        report(f"jobs written in {time.perf_counter() - built:.1f} s (not analysed)")
        if "record" in parts:
            timings = bench_record(sf, ids["record"], args.reps, skip=0)
            report(f"record, batch of 8, no stats: {summary(timings)}")
            report_floor(sf, ids["record"], args.reps, report)
        if "results" in parts:
            out = Path(args.out_dir) / f"{name}.jsonl"
            try:
                said = bench_results(sf, ids["results"], out, args.results_limit)
            finally:
                out.unlink(missing_ok=True)
            report(f"results, {n:,} items, no stats: {said}")
        if "retry" in parts:
            report(f"retry, {n:,} failed items, no stats: {bench_retry(sf, ids['retry'])}")
        if "cancel" in parts:
            report(f"cancel, {n:,} queued items, no stats: {bench_cancel(sf, dsn, ids['cancel'])}")
        if "record" in parts or "results" in parts:
            analyse(engine)
        if "record" in parts:
            timings = bench_record(sf, ids["record"], args.reps, skip=(args.reps + 1) * 8)
            report(f"record, batch of 8, analysed: {summary(timings)}")
            report_floor(sf, ids["record"], args.reps, report)
        if "results" in parts and args.results_analysed:
            out = Path(args.out_dir) / f"{name}.jsonl"
            try:
                said = bench_results(sf, ids["results"], out, args.results_limit)
            finally:
                out.unlink(missing_ok=True)
            report(f"results, {n:,} items, analysed: {said}")
    finally:
        engine.dispose()
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="items per job")
    parser.add_argument("--reps", type=int, default=30, help="timed batches (record)")
    parser.add_argument("--parts", default=",".join(PARTS), help="which, comma-separated")
    parser.add_argument(
        "--results-limit", type=float, default=600, help="seconds before an export is stopped"
    )
    parser.add_argument(
        "--results-analysed", action="store_true", help="export again after ANALYZE (results)"
    )
    parser.add_argument("--out-dir", default="/tmp", help="where the export is written")
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL server (any database)")
    args = parser.parse_args(argv)
    run(args, lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
