"""Peak memory of the worker process for hostile-but-valid batches, through the real pipeline.

    python bench/memory.py [--scenario pdf|png|all] [--limit-gib 8]

(a) pdf  one message of 8 page-bomb PDFs (50 pages of 3500x3500 pt each, a few KB per file),
         extraction at the default 144 dpi: each page would render to 7000x7000 = 49 MP, under
         the per-page limit, so only a per-item pixel budget stops them.
         With ``--max-item-pixels 10000000000`` the budget lets them through, to measure what
         rendering pages lazily into the model batches holds.
(b) png  one message of 120 PNGs of 1500x1500 (captioning, model batch 8): what the worker
         fetches and decodes ahead of the model.

Inputs are submitted (SQLite, local storage) in this process; each scenario's batch then runs
in a fresh child process with the fake engine (``model.fake``), which reports its peak RSS
(``ru_maxrss``) and its RSS just before the batch. ``--limit-gib`` caps the child's address
space (RLIMIT_AS), so an unbounded run fails in the child instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 20}},
    "required": ["title"],
}
MODEL_BATCH = 8


def page_bomb(pages: int, side_pt: float, tag: int) -> bytes:
    """A PDF of ``pages`` empty pages of ``side_pt`` points square; ``tag`` makes it unique."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    try:
        for _ in range(pages):
            document.new_page(side_pt, side_pt).close()
        buffer = io.BytesIO()
        document.save(buffer)
    finally:
        document.close()
    # A trailing comment after %%EOF: readers ignore it, content addressing sees a new file.
    return buffer.getvalue() + f"\n% document {tag}\n".encode()


def large_png(side: int, seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180)))
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        x, y = rng.randrange(side), rng.randrange(side)
        draw.rectangle((x, y, x + 40, y + 40), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def submit(home: Path, scenario: str, args: argparse.Namespace) -> list[list[str]]:
    """Writes the inputs, submits them as one message, and returns the published batches."""
    from jobs.db import make_engine, make_session_factory
    from jobs.dispatch import CallbackPublisher
    from jobs.migrate import upgrade_database
    from jobs.submit.job import submit_job
    from jobs.submit.request import SubmitRequest
    from storage import open_blobs

    inputs = home / "inputs"
    inputs.mkdir(parents=True)
    if scenario == "pdf":
        for i in range(args.documents):
            (inputs / f"bomb{i}.pdf").write_bytes(page_bomb(args.pages, args.side_pt, i))
        request = SubmitRequest.of(
            kind="extract",
            sources=[str(inputs)],
            model="fake",
            max_new_tokens=32,
            batch_size=args.documents,
            schema=SCHEMA,
        )
    else:
        for i in range(args.images):
            (inputs / f"big{i:03d}.png").write_bytes(large_png(args.side_px, i))
        request = SubmitRequest.of(
            kind="caption",
            sources=[str(inputs)],
            model="fake",
            max_new_tokens=8,
            batch_size=args.images,
        )
    db = make_engine(f"sqlite:///{home / 'bench.sqlite3'}")
    upgrade_database(db)
    batches: list[list[str]] = []
    submit_job(
        request,
        session_factory=make_session_factory(db),
        blobs=open_blobs(str(home / "blobs")),
        publisher=CallbackPublisher(lambda _job, ids: batches.append(ids)),
        max_prompt_chars=4000,
    )
    return batches


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(home: Path, limit_gib: float, max_item_pixels: int | None) -> None:
    """Runs the submitted batches in this process and prints one JSON line about memory."""
    if limit_gib > 0:
        cap = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import importlib

    from jobs.db import make_engine, make_session_factory
    from jobs.settings import Settings
    from model.fake import FakeEngine
    from storage import open_blobs
    from workers.pipeline import process_batch
    from workers.resources import WorkerResources

    # Imported before the baseline, as a worker would have them loaded.
    for name in ("model.documents", "model.images", "pypdfium2"):
        importlib.import_module(name)

    batches = json.loads((home / "batches.json").read_text())
    # One slot with one decode thread; the item budget only where one is asked for.
    budget = {"max_item_pixels": max_item_pixels} if max_item_pixels else {}
    settings = Settings.from_env(
        gpu_batch_size=MODEL_BATCH, max_new_tokens=32, worker_slots=1, decode_threads=1, **budget
    )
    res = WorkerResources(
        settings=settings,
        session_factory=make_session_factory(make_engine(f"sqlite:///{home / 'bench.sqlite3'}")),
        blobs=open_blobs(str(home / "blobs")),
        engine_loader=FakeEngine,
    )
    baseline = _rss_mib()
    start = time.perf_counter()
    outcome: dict[str, object] = {}
    try:
        reports = [process_batch(batch, res) for batch in batches]
        outcome["succeeded"] = sum(r.succeeded for r in reports)
        outcome["failed"] = sum(r.failed for r in reports)
    except BaseException as exc:  # reported: it is the measurement
        outcome["crashed"] = f"{type(exc).__name__}: {exc}"[:200]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    outcome.update(
        baseline_mib=round(baseline),
        peak_mib=round(peak),
        added_mib=round(peak - baseline),
        seconds=round(time.perf_counter() - start, 1),
    )
    if "crashed" not in outcome:
        from sqlalchemy import select

        from jobs.db import Item

        with res.session_factory() as session:
            rows = session.execute(select(Item.status, Item.error_code)).all()
        outcome["items"] = sorted({f"{s}:{c}" for s, c in rows})
    sys.stdout.write(json.dumps(outcome) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["pdf", "png", "all"], default="all")
    parser.add_argument("--limit-gib", type=float, default=8.0, help="0: no cap")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--side-pt", type=float, default=3500.0)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--side-px", type=int, default=1500)
    parser.add_argument(
        "--max-item-pixels", type=int, default=0, help="raise the per-item budget (0: default)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.limit_gib, args.max_item_pixels)
        return
    for scenario in ["pdf", "png"] if args.scenario == "all" else [args.scenario]:
        home = Path(tempfile.mkdtemp(prefix=f"bench-memory-{scenario}-"))
        batches = submit(home, scenario, args)
        (home / "batches.json").write_text(json.dumps(batches))
        run = subprocess.run(
            [
                *(sys.executable, __file__, "--child", str(home)),
                *("--limit-gib", str(args.limit_gib)),
                *("--max-item-pixels", str(args.max_item_pixels)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = run.stdout.strip().splitlines()
        result = lines[-1] if lines else f"no result (exit {run.returncode}): {run.stderr[-500:]}"
        sys.stdout.write(f"{scenario}: {result}\n")


if __name__ == "__main__":
    main()
