"""A catalogue submitted again with a few new photos: with and without ``--reuse``.

    python bench/reuse.py [--items 200] [--new-percent 5] [--max-new-tokens 16] [--model tiny-llava]
                          [--database-url postgresql+psycopg://…]

Makes a catalogue of ``--items`` product photos (bench/catalogue.py: real JPEG sizes and decode
cost) and captions it once through the embedded pipeline (in-process worker, local storage;
SQLite unless ``--database-url``). Then adds ``--new-percent`` % new photos and captions the
whole catalogue again twice, in one process and on one warm model: with ``--reuse`` (only the
new ones run; the rest are copies), then without (every photo runs). Prints the seconds of
each, the items the model ran for, and the speed-up of reuse. Each run is a new job over the
same folder, as a user resubmitting it would make.

    python bench/reuse.py --lookup-sources 1000000 [--url postgresql://…]

measures the hot path instead: what copying a claimed batch of 8 costs (the lookup through
``ix_items_reuse_key`` and the write, ``jobs.lifecycle.reuse.reuse_results``) among that many
earlier results of the same model, in a throwaway PostgreSQL database (median and p90 ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from catalogue import QUALITY, make_catalogue, make_image  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.submit.request import SubmitRequest  # noqa: E402
from model.engine import Engine  # noqa: E402
from storage import open_blobs  # noqa: E402
from workers.local import run_job_locally  # noqa: E402
from workers.resources import (  # noqa: E402
    WorkerResources,
    build_engine_spec,
    load_transformers_engine,
)


def caption(
    res: WorkerResources, images: Path, args: argparse.Namespace, *, reuse: bool
) -> tuple[float, int, int]:
    """Seconds to caption ``images`` (submit included), and the job's items and copies."""
    from sqlalchemy import func, select

    from jobs.db import Item

    request = SubmitRequest.of(
        "caption",
        [str(images)],
        args.model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        reuse=reuse,
    )
    start = time.perf_counter()
    result = run_job_locally(request, res, max_prompt_chars=4000)
    seconds = time.perf_counter() - start
    with res.session_factory() as session:
        reused = session.scalar(
            select(func.count(Item.reused_from)).where(Item.job_id == result.job_id)
        )
    return seconds, result.item_count, int(reused or 0)


def resources(home: Path, engine: Engine, args: argparse.Namespace) -> WorkerResources:
    from jobs.db import make_engine, make_session_factory
    from jobs.migrate import upgrade_database

    db = make_engine(args.database_url or f"sqlite:///{home / 'bench.sqlite3'}")
    upgrade_database(db)
    settings = Settings.from_env(
        model=args.model,
        gpu_batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        worker_slots=1,
    )
    return WorkerResources(
        settings=settings,
        session_factory=make_session_factory(db),
        blobs=open_blobs(str(home / "blobs")),
        engine_loader=lambda: engine,
        serves_model=True,  # records the model's revision, which reuse matches on
    )


def lookup_cost(url: str, sources: int, reps: int) -> None:
    """Batches of 8 claimed and copied from among ``sources`` earlier results."""
    import statistics
    import uuid

    import psycopg
    from sqlalchemy import text

    from jobs.db import make_engine, make_session_factory, new_id, utcnow
    from jobs.fleet import Serving
    from jobs.lifecycle import claim_items
    from jobs.lifecycle.reuse import reuse_results
    from jobs.migrate import upgrade_database

    name = f"bench_reuse_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        db = make_engine(db_url)
        upgrade_database(db)
        sf = make_session_factory(db)
        serving = Serving("bench", "rev-1", "none")
        earlier, later = new_id(), new_id()
        with sf.begin() as session:
            for job, status in ((earlier, "completed"), (later, "in_progress")):
                session.execute(
                    text(
                        "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                        "VALUES (:id, 'caption', :status, '{\"reuse\": true}', 'bench', :now)"
                    ),
                    {"id": job, "status": status, "now": utcnow()},
                )
            session.execute(
                text(
                    "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                    "transient_failures, created_at, reuse_key, model, model_revision, "
                    "quantization, result_text) "
                    "SELECT gen_random_uuid()::text, :job, g, 'x', 'file:///x', 'succeeded', 1, "
                    "0, :now, md5(g::text) || md5('k' || g), 'bench', 'rev-1', 'none', "
                    "'a caption' FROM generate_series(0, :n - 1) AS g"
                ),
                {"job": earlier, "n": sources, "now": utcnow()},
            )
            session.execute(  # the resubmission: the first reps*8 photos again
                text(
                    "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                    "transient_failures, created_at, reuse_key) "
                    "SELECT gen_random_uuid()::text, :job, g, 'x', 'file:///x', 'queued', 0, 0, "
                    ":now, md5(g::text) || md5('k' || g) FROM generate_series(0, :n - 1) AS g"
                ),
                {"job": later, "n": reps * 8, "now": utcnow()},
            )
        with sf.begin() as session:
            session.execute(text("ANALYZE items"))
        with sf() as session:
            ids = list(
                session.scalars(
                    text("SELECT id FROM items WHERE job_id = :job ORDER BY seq"), {"job": later}
                )
            )
        timings = []
        for rep in range(reps):
            batch = ids[rep * 8 : rep * 8 + 8]
            claimed = claim_items(sf, batch, worker="b", lease_seconds=600, serving=serving)
            start = time.perf_counter()
            assert len(reuse_results(sf, claimed, serving)) == len(batch)
            timings.append((time.perf_counter() - start) * 1000)
        db.dispose()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    timings.sort()
    p90 = timings[int(len(timings) * 0.9) - 1]
    print(
        f"copy a batch of 8 among {sources} results: median "
        f"{statistics.median(timings):.2f} ms, p90 {p90:.2f} ms ({reps} batches)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--new-percent", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--lookup-sources", type=int, default=0)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.lookup_sources:
        lookup_cost(args.url, args.lookup_sources, args.reps)
        return

    engine: Any = load_transformers_engine(build_engine_spec(Settings.from_env(model=args.model)))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        images = home / "catalogue"
        images.mkdir()
        make_catalogue(images, args.items)
        res = resources(home, engine, args)
        first, n, _ = caption(res, images, args, reuse=False)
        new = max(1, round(args.items * args.new_percent / 100))
        for i in range(args.items, args.items + new):
            make_image(i).save(images / f"new{i:04d}.jpg", quality=QUALITY)
        # With reuse first: run after it, the run without would be a source of the new ones.
        reusing, total, reused = caption(res, images, args, reuse=True)
        again, _, _ = caption(res, images, args, reuse=False)
    print(
        f"model={args.model} revision={engine.revision} items={n} new={new} "
        f"batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} "
        f"database={'postgresql' if args.database_url else 'sqlite'}"
    )
    print(f"first run                  {first:8.2f} s  {n:5d} items run")
    print(f"again, without --reuse     {again:8.2f} s  {total:5d} items run")
    ran = total - reused
    print(f"again, with --reuse        {reusing:8.2f} s  {ran:5d} items run, {reused} reused")
    print(f"speed-up of --reuse: {again / reusing:.1f}x")


if __name__ == "__main__":
    main()
