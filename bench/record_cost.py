"""What recording one batch costs as its job grows: claim 8 items, record them, repeat.

    python bench/record_cost.py [--sizes 100,10000,1000000] [--reps 30] [--url postgresql://...]

Each size gets its own job (rows inserted with one INSERT … SELECT), all in one throwaway
PostgreSQL database created for the run (default: the local server), so the sizes are measured
side by side. Reports the median and p90 milliseconds of ``record_results`` for a batch of 8,
which includes finalising the job. The design target: the same at every size, ≤ 5 ms here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(os.environ.get("LLAVA_BATCH_BENCH_ROOT", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import text  # noqa: E402

from jobs.db import SessionFactory, make_engine, make_session_factory, new_id, utcnow  # noqa: E402
from jobs.lifecycle import ItemOutcome, claim_items, record_results  # noqa: E402
from jobs.migrate import upgrade_database  # noqa: E402
from jobs.outcome import Outcome  # noqa: E402


def make_job(sf: SessionFactory, size: int) -> list[str]:
    """A job of ``size`` queued items; returns the ids of the first reps*8 of them."""
    job_id = new_id()
    with sf.begin() as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES (:id, 'caption', 'in_progress', '{}', 'bench', :now)"
            ),
            {"id": job_id, "now": utcnow()},
        )
        session.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at) "
                "SELECT gen_random_uuid()::text, :job, g, 'x', 'file:///x', 'queued', 0, 0, :now "
                "FROM generate_series(0, :n - 1) AS g"
            ),
            {"job": job_id, "n": size, "now": utcnow()},
        )
        ids = session.execute(
            text("SELECT id FROM items WHERE job_id = :job ORDER BY seq LIMIT 4000"),
            {"job": job_id},
        )
        return [row[0] for row in ids]
    return []


def measure(sf: SessionFactory, ids: list[str], reps: int) -> list[float]:
    timings = []
    for rep in range(min(reps, len(ids) // 8)):
        batch = ids[rep * 8 : rep * 8 + 8]
        claimed = claim_items(sf, batch, worker="bench", lease_seconds=600)
        outcomes = [
            ItemOutcome(c.id, c.lease_token, Outcome(text="a caption", tokens_out=3))
            for c in claimed
        ]
        start = time.perf_counter()
        assert record_results(sf, outcomes) == len(batch)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,200000,1000000")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"llava_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        url = args.url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        engine = make_engine(f"{url}/{name}")
        upgrade_database(engine)
        sf = make_session_factory(engine)
        jobs = {int(size): make_job(sf, int(size)) for size in args.sizes.split(",")}
        with engine.connect() as conn:
            conn.execute(text("ANALYZE items"))
            conn.commit()
        print(f"record_results, batch of 8, {args.reps} reps, code: {ROOT}")
        print(f"{'job items':>10} {'median ms':>10} {'p90 ms':>8}")
        for size, ids in jobs.items():
            timings = sorted(measure(sf, ids, args.reps))
            p90 = timings[int(len(timings) * 0.9) - 1]
            print(f"{size:>10} {statistics.median(timings):>10.2f} {p90:>8.2f}")
        engine.dispose()
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
