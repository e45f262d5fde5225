"""Steady-state memory: does a worker's RSS keep growing as it works through many items?

    python bench/steady_state.py [--items 5000] [--batch-size 8] [--max-new-tokens 8]

Runs one caption job of ``--items`` small JPEGs (60 distinct pictures, each file its own item)
through the real worker pipeline with the tiny model, in this process (the embedded runner:
SQLite, local storage). RSS is sampled after every batch; the figure that matters is the growth
from the end of warm-up (the first 10 % of items: allocator pools, caches and the model's
buffers reach their size) to the end. Issue 11's target: under 5 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.submit.request import SubmitRequest  # noqa: E402
from workers.local import run_job_locally  # noqa: E402
from workers.pipeline import BatchReport  # noqa: E402
from workers.resources import build_resources  # noqa: E402


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc (Linux only)")


def write_images(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    pictures = []
    for i in range(60):
        image = Image.effect_noise((96 + i, 64 + i % 7), 30 + i).convert("RGB")
        pictures.append(image)
    for i in range(count):
        # Each file differs by one pixel: distinct content, so no two items share a blob.
        image = pictures[i % len(pictures)].copy()
        image.putpixel((0, 0), (i % 256, (i // 256) % 256, 7))
        image.save(directory / f"p{i:05d}.png")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    write_images(home / "images", args.items)
    settings = Settings.from_env(
        home=home,
        model="tiny-llava",
        message_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    from jobs.db import open_database
    from jobs.migrate import upgrade_database

    upgrade_database(open_database(settings))
    res = build_resources(settings)
    _ = res.engine  # loaded before the first sample

    samples: list[tuple[int, float]] = []
    done = 0

    def on_batch(_ids: Sequence[str], report: BatchReport) -> None:
        nonlocal done
        done += report.succeeded + report.failed
        samples.append((done, rss_mib()))

    started = time.monotonic()
    request = SubmitRequest.of(
        "caption",
        [str(home / "images")],
        settings.model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    run_job_locally(request, res, max_prompt_chars=settings.max_prompt_chars, on_batch=on_batch)
    elapsed = time.monotonic() - started

    warm = next(rss for n, rss in samples if n >= args.items // 10)
    last = samples[-1][1]
    peak = max(rss for _n, rss in samples)
    print(f"items {done} in {elapsed:.1f}s ({done / elapsed:.0f} items/s)")
    print("items  rss_mib")
    for n, rss in [*samples[:: max(1, len(samples) // 10)], samples[-1]]:
        print(f"{n:5d}  {rss:8.1f}")
    growth = (last - warm) / warm * 100
    print(f"RSS after warm-up {warm:.1f} MiB, at the end {last:.1f} MiB, peak {peak:.1f} MiB")
    print(f"growth after warm-up: {growth:+.2f} % (target < 5 %)")


if __name__ == "__main__":
    main()
