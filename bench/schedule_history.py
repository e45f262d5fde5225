"""A schedule firing with a long history: does it stay flat?

    python bench/schedule_history.py [--history 300000] [--objects 1000] [--new 3]
                                     [--firings 7] [--json PATH]

Against the local PostgreSQL (LLAVA_BATCH_BENCH_POSTGRES, default postgresql://postgres@
127.0.0.1:5432/postgres: a fresh database, migrated, dropped after). A caption schedule watches
a local folder of ``--objects`` small PNGs; a first firing (untimed) processes them all. Then
``--history`` rows of objects long gone from the folder are added to its history
(``schedule_objects``, one INSERT … SELECT generate_series, then ANALYZE): what a schedule
that has run for months remembers. Each timed firing comes due with ``--new`` new files in
the folder (written untimed before it); ``fire_due_schedules`` is timed end to end, in this
process, with a publisher that sends nothing: listing the folder, the claim, the history
lookups (and, once pruning exists, one pruning step), storing the new files, the job's rows.
The median of ``--firings``; then one more firing under tracemalloc for its peak of Python
memory. The same with no history rows at all, first, as the floor.

The code measured is whatever ``jobs`` is on PYTHONPATH, so the same script times the code
before a change: ``git worktree add /tmp/before COMMIT`` and run this file with
``PYTHONPATH=/tmp/before``. Target (issue 28): a firing ≤ 50 ms with 300k history rows.

Measured 2026-12-07 on the shared 2-core dev machine (load 5 to 6: figures swing by 2x),
PostgreSQL 127.0.0.1, 1,000 objects, 3 new per firing, median of 11, two runs each; before
(2baf07e, the whole history read into a set) → after (the listed keys only, 500 a query, and a
1,000-row pruning step per firing):

    no history        84, 103 ms → 146, 78 ms
    300k history      1,304, 897 ms → 188, 203 ms (each firing also deletes 1,000 gone rows)
    peak (300k)       94.9 MB → 1.1 MB
    history kept      301,036 rows → 289,036 after 12 firings

docs/benchmarks.md, "Schedule firing and its history", has the breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("PYTHONPATH"):  # an explicit PYTHONPATH (the code before) wins
    sys.path.insert(0, str(ROOT))

DUE = timedelta(minutes=15)


class Silent:
    """A publisher that sends nothing: the bench times the firing, not the broker."""

    bell_limit = 64

    def ring(self, model: str, count: int, *, job_id: str | None = None, **_: Any) -> None:
        pass

    def waiting(self, model: str) -> int | None:
        return None

    def publish(self, job_id: str, item_ids: Sequence[str], model: str, **_: Any) -> None:
        pass

    def oldest_waiting(self, model: str) -> datetime | None:
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, default=300_000, help="rows of gone objects")
    parser.add_argument("--objects", type=int, default=1000, help="files in the folder")
    parser.add_argument("--new", type=int, default=3, help="new files before each firing")
    parser.add_argument("--firings", type=int, default=7, help="timed firings (the median)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    return parser.parse_args(argv)


def png(seed: int) -> bytes:
    """A small PNG of its own (distinct bytes, so the blob store keeps each one)."""
    import io

    from PIL import Image

    image = Image.new("RGB", (8, 8), (seed % 256, (seed // 256) % 256, (seed // 65536) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def create_database(server: str) -> tuple[str, str]:
    import psycopg

    name = f"llava_bench_sh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    return name, url


def drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add_history(session_factory: Any, schedule_id: str, rows: int) -> None:
    """``rows`` processed objects no longer in the folder, in one statement."""
    from sqlalchemy import text

    with session_factory.begin() as session:
        session.execute(
            text(
                "INSERT INTO schedule_objects (id, schedule_id, key, etag, job_id, created_at) "
                "SELECT md5(random()::text || n)::uuid::text, :schedule, "
                "'gone/' || lpad(n::text, 7, '0') || '.png', '1-1', 'earlier', now() "
                "FROM generate_series(1, :rows) AS n"
            ),
            {"schedule": schedule_id, "rows": rows},
        )
    with session_factory() as session:
        session.connection().exec_driver_sql("ANALYZE schedule_objects")
        session.commit()


def history_rows(session_factory: Any, schedule_id: str) -> int:
    from sqlalchemy import text

    with session_factory() as session:
        return int(
            session.execute(
                text("SELECT count(*) FROM schedule_objects WHERE schedule_id = :s"),
                {"s": schedule_id},
            ).scalar_one()
        )


def one_case(server: str, args: argparse.Namespace, history: int) -> dict[str, Any]:
    from jobs.db import make_engine, make_session_factory, utcnow
    from jobs.migrate import upgrade_database
    from jobs.schedules import add_schedule, fire_due_schedules
    from jobs.submit.request import SubmitRequest
    from storage import open_blobs

    name, url = create_database(server)
    engine = make_engine(url)
    try:
        upgrade_database(engine)
        sf = make_session_factory(engine)
        with tempfile.TemporaryDirectory(prefix="bench-sh-") as tmp:
            folder = Path(tmp) / "drop"
            folder.mkdir()
            for i in range(args.objects):
                (folder / f"obj{i:07d}.png").write_bytes(png(i))
            blobs = open_blobs(str(Path(tmp) / "blobs"))
            start = utcnow()
            schedule = add_schedule(
                sf,
                name="bench",
                source=str(folder),
                request=SubmitRequest.of("caption", [], "tiny-llava", batch_size=8),
                every="15m",
                cron=None,
                max_prompt_chars=4000,
                now=start,
            )
            publisher = Silent()
            assert len(fire_due_schedules(sf, blobs, publisher, now=start + DUE)) == 1
            if history:
                add_history(sf, schedule.id, history)
            rows_before = history_rows(sf, schedule.id)
            written = args.objects
            times = []
            for firing in range(args.firings + 1):
                for _ in range(args.new):
                    (folder / f"obj{written:07d}.png").write_bytes(png(written))
                    written += 1
                due = start + (firing + 2) * DUE
                if firing < args.firings:
                    began = time.perf_counter()
                    created = fire_due_schedules(sf, blobs, publisher, now=due)
                    times.append(time.perf_counter() - began)
                else:  # the last one measures memory: tracemalloc slows what it watches
                    tracemalloc.start()
                    created = fire_due_schedules(sf, blobs, publisher, now=due)
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                assert len(created) == 1, created
            return {
                "history_rows": history,
                "firing_median_ms": statistics.median(times) * 1000,
                "firing_max_ms": max(times) * 1000,
                "firings_ms": [round(t * 1000, 1) for t in times],
                "peak_python_mb": peak / 2**20,
                "history_before": rows_before,
                "history_after": history_rows(sf, schedule.id),
            }
    finally:
        engine.dispose()
        drop_database(server, name)


def render(results: Sequence[dict[str, Any]], code: str) -> str:
    lines = [
        f"code: {code}",
        f"{'history rows':>12}  {'median ms':>9}  {'max ms':>7}  {'peak MB':>7}  history kept",
    ]
    for r in results:
        lines.append(
            f"{r['history_rows']:>12,}  {r['firing_median_ms']:>9.1f}  {r['firing_max_ms']:>7.1f}"
            f"  {r['peak_python_mb']:>7.1f}  {r['history_before']:,} -> {r['history_after']:,}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    server = os.environ.get(
        "LLAVA_BATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    import jobs

    code = str(Path(jobs.__file__).resolve().parents[1])
    results = [one_case(server, args, history) for history in (0, args.history)]
    print(render(results, code))
    if args.json:
        args.json.write_text(json.dumps({"code": code, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
