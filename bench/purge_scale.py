"""Deleting a big job: how long ``purge`` takes for a 1M-item job, and the longest statement.

    python bench/purge_scale.py [--items 1000000] [--batch 1000] [--shared 0.01]

Against the local PostgreSQL (LLAVA_BATCH_BENCH_POSTGRES, default postgresql://postgres@
127.0.0.1:5432/postgres: a fresh database, dropped after). The job is built in SQL (INSERT …
SELECT generate_series: every item a distinct stored input, its result written, one page per
hundred items), ended with a retention that has passed; a second, small job keeps ``--shared``
of the same inputs, so collection meets referenced candidates too. The store is a local
directory holding the inputs the small job references (files of a few bytes); the rest of the
big job's inputs are absent, so collection times the database side, not a million unlinks.

Then ``jobs.retention.purge`` runs to the end as ``llava-batch purge`` does, with every SQL
statement timed (SQLAlchemy cursor events): the total, the phases (marking, deleting rows,
collecting inputs), the longest statement and the transactions.

Targets (issue 28): a 1M-item job purged in ≤ 120 s; no statement over 1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from jobs.db import make_engine, make_session_factory, utcnow
from jobs.migrate import upgrade_database
from jobs.retention.purge import purge
from storage import open_blobs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shared", type=float, default=0.01, help="share kept by a 2nd job")
    return parser.parse_args(argv)


class StatementClock:
    """The longest statement and how many ran, from SQLAlchemy's cursor events."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_sql = ""
        self.count = 0
        self.rows_gone_at: float | None = None  # the job row deleted: its rows are all gone
        self._started: dict[int, float] = {}

    def attach(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        took = time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())
        self.count += 1
        if statement.startswith("DELETE FROM jobs"):
            self.rows_gone_at = time.perf_counter()
        if took > self.longest:
            self.longest, self.longest_sql = took, " ".join(statement.split())[:120]


def build(engine: Any, store_root: Path, *, items: int, shared: int) -> str:
    """The big job (ended, due) and a small one sharing ``shared`` of its inputs."""
    big, small = str(uuid.uuid4()), str(uuid.uuid4())
    area = (store_root / "inputs" / "sha256").as_uri()
    past = utcnow().replace(year=2000)
    with engine.begin() as conn:
        for job_id, status in ((big, "completed"), (small, "completed")):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, status, params, model, created_at, finished_at,"
                    " priority, turn_at, keep_inputs, retain_seconds, retained_until)"
                    " VALUES (:id, 'caption', :s, '{}', 'm', :t, :t, 0, :t, false, :r, :u)"
                ),
                {
                    "id": job_id,
                    "s": status,
                    "t": past,
                    "r": 60 if job_id == big else None,
                    "u": past if job_id == big else None,
                },
            )
        sha = "md5(g::text) || md5((g + 1)::text)"
        conn.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, input_sha256, status,"
                " attempts, transient_failures, result_text, created_at, finished_at)"
                f" SELECT gen_random_uuid()::text, :job, g, 'img' || g || '.png',"
                f" :area || '/' || substr({sha}, 1, 2) || '/' || {sha} || '.png', {sha},"
                " 'succeeded', 1, 0, 'a caption of some length for the row', :t, :t"
                " FROM generate_series(0, :n - 1) AS g"
            ),
            {"job": big, "area": area, "n": items, "t": past},
        )
        conn.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, input_sha256, status,"
                " attempts, transient_failures, created_at)"
                " SELECT gen_random_uuid()::text, :small, seq, source, input_uri, input_sha256,"
                " 'succeeded', 1, 0, created_at FROM items WHERE job_id = :big AND seq < :k"
            ),
            {"small": small, "big": big, "k": shared},
        )
        conn.execute(
            text(
                "INSERT INTO item_pages (id, item_id, page_number, result_text, created_at)"
                " SELECT gen_random_uuid()::text, id, 1, 'page', created_at FROM items"
                " WHERE job_id = :big AND seq % 100 = 0"
            ),
            {"big": big},
        )
        kept = conn.execute(
            text("SELECT input_uri FROM items WHERE job_id = :small"), {"small": small}
        ).scalars()
        for uri in kept:
            path = Path(uri.removeprefix("file://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"kept")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
    return small


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import psycopg

    server = os.environ.get(
        "LLAVA_BATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"llava_bench_purge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{server.rsplit('/', 1)[0]}/{name}".replace(
            "postgresql://", "postgresql+psycopg://", 1
        )
        engine = make_engine(url)
        upgrade_database(engine)
        with tempfile.TemporaryDirectory() as store:
            started = time.perf_counter()
            shared = int(args.items * args.shared)
            small = build(engine, Path(store), items=args.items, shared=shared)
            built = time.perf_counter() - started
            clock = StatementClock()
            clock.attach(engine)
            blobs = open_blobs(store)
            started = time.perf_counter()
            report = purge(make_session_factory(engine), blobs, batch=args.batch)
            took = time.perf_counter() - started
            with engine.connect() as conn:
                left = conn.execute(text("SELECT count(*) FROM items")).scalar_one()
                small_left = conn.execute(
                    text("SELECT count(*) FROM items WHERE job_id = :s"), {"s": small}
                ).scalar_one()
            kept_files = sum(1 for p in Path(store).rglob("*") if p.is_file())
        print(f"built {args.items:,} items (+{shared:,} shared by a second job) in {built:.1f} s")
        print(f"purge: {took:.1f} s ({args.items / took:,.0f} items/s), batch {args.batch}")
        if clock.rows_gone_at is not None:
            rows = clock.rows_gone_at - started
            print(f"  rows (job, items, pages) {rows:.1f} s; inputs collected {took - rows:.1f} s")
        print(f"  report {report.as_dict()}")
        print(f"  statements {clock.count:,}; longest {clock.longest * 1000:.0f} ms:")
        print(f"    {clock.longest_sql}")
        print(
            f"  items left {left:,} (the second job's {small_left:,}); "
            f"its files kept {kept_files:,}"
        )
        ok = took <= 120 and clock.longest <= 1.0 and small_left == shared == kept_files
        print(
            "targets (≤ 120 s, no statement over 1 s, shared inputs kept):",
            "met" if ok else "NOT met",
        )
        engine.dispose()
        return 0 if ok else 1
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
