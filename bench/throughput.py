"""Throughput of the captioning path, measured in one run so the ratios are fair.

    python bench/throughput.py [--items 64] [--batch-size 8] [--max-new-tokens 16]
                               [--model tiny-llava] [--mode embedded|celery]
    python bench/throughput.py --gpu [--check] ...   (bench/throughput_gpu.py: a full-size
                               random LLaVA on CUDA against the physical limit)

(a) system   submit → claim → fetch → decode → batched generate → record, through the real code:
             embedded mode (SQLite, local storage, in-process worker) or, with --mode celery, a
             real ``llava-batch worker`` process with the DB/broker/storage from LLAVA_BATCH_*.
(b) raw      the same engine, ``generate`` over pre-decoded images in batches: the ceiling.
(c) naive    a notebook loop: read, decode and generate one image at a time.
(d) overhead the system path with a stub engine that returns at once: orchestration ms/item.

Absolute items/s from the tiny model on a CPU do not carry over to a GPU; the ratios a/b (what
orchestration costs) and a/c (what batching buys) are the point.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from throughput_gpu import add_gpu_arguments, run_gpu_mode  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.states import JobKind  # noqa: E402
from jobs.submit import SubmitRequest  # noqa: E402
from model.engine import Engine, GenerationRequest  # noqa: E402
from model.fake import FakeEngine  # noqa: E402
from model.images import decode_image  # noqa: E402
from storage import open_blobs  # noqa: E402
from workers.local import run_job_locally  # noqa: E402
from workers.resources import WorkerResources, build_engine_spec, load_transformers_engine  # noqa: E402

SIZES = [(640, 480), (480, 640), (800, 800), (1024, 512), (320, 240), (1200, 900)]


def make_images(directory: Path, count: int) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        image = Image.effect_noise((w, h), 40 + i % 30).convert("RGB")
        image = Image.blend(
            image, Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3))), 0.5
        )
        path = directory / f"p{i:04d}.jpg"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def run_embedded(images_dir: Path, engine: Engine, args: argparse.Namespace, tag: str) -> float:
    from jobs.db import make_engine, make_session_factory
    from jobs.migrate import upgrade_database

    home = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    db = make_engine(f"sqlite:///{home / 'bench.sqlite3'}")
    upgrade_database(db)
    res = WorkerResources(
        session_factory=make_session_factory(db),
        blobs=open_blobs(str(home / "blobs")),
        engine_loader=lambda: engine,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        lease_seconds=600,
        max_attempts=3,
        max_image_pixels=50_000_000,
    )
    request = SubmitRequest.of(
        kind=JobKind.caption,
        sources=[str(images_dir)],
        model=engine.name,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    result = run_job_locally(request, res, max_prompt_chars=4000)
    elapsed = time.perf_counter() - start
    assert result.item_count == args.items
    return elapsed


def run_celery(images_dir: Path, args: argparse.Namespace) -> float:
    cli = str(Path(sys.executable).parent / "llava-batch")
    env = {
        **os.environ,
        "LLAVA_BATCH_BATCH_SIZE": str(args.batch_size),
        "LLAVA_BATCH_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "LLAVA_BATCH_MODEL": args.model,
    }
    subprocess.run([cli, "db", "upgrade"], env=env, check=True)
    log = open(Path(tempfile.mkdtemp()) / "worker.log", "w+b")  # noqa: SIM115
    worker = subprocess.Popen([cli, "worker", "--no-sweep"], env=env, stdout=log, stderr=log)
    try:
        while b"worker ready" not in Path(log.name).read_bytes():
            if worker.poll() is not None:
                raise SystemExit(Path(log.name).read_text())
            time.sleep(0.2)
        start = time.perf_counter()
        out = subprocess.run(
            [cli, "submit", "caption", str(images_dir), "--json", "--wait"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
    finally:
        worker.terminate()
        worker.wait(60)
    assert json.loads(out.stdout.splitlines()[0])["items"] == args.items
    return elapsed


def run_raw(paths: list[Path], engine: Engine, args: argparse.Namespace) -> float:
    # Decoded ahead of time exactly as the worker decodes (reduced-scale JPEG included), so
    # (b) is the engine alone on ready inputs.
    side = getattr(engine, "input_side", None)
    images = [decode_image(p.read_bytes(), min_side=side) for p in paths]
    prompt = "Describe this image in one sentence."
    start = time.perf_counter()
    for i in range(0, len(images), args.batch_size):
        batch = [GenerationRequest(image, prompt) for image in images[i : i + args.batch_size]]
        engine.generate(batch, max_new_tokens=args.max_new_tokens)
    return time.perf_counter() - start


def run_naive(paths: list[Path], engine: Engine, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    for path in paths:
        image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
        engine.generate(
            [GenerationRequest(image, "Describe this image in one sentence.")],
            max_new_tokens=args.max_new_tokens,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, help="default 64; 256 with --gpu")
    parser.add_argument("--batch-size", type=int, help="default 8; 32 with --gpu")
    parser.add_argument("--max-new-tokens", type=int, help="default 16; 60 with --gpu")
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--mode", choices=["embedded", "celery"], default="embedded")
    add_gpu_arguments(parser)
    args = parser.parse_args()
    gpu_defaults = (8, 4, 4) if args.check else (256, 32, 60)
    defaults = gpu_defaults if args.gpu else (64, 8, 16)
    args.items = args.items or defaults[0]
    args.batch_size = args.batch_size or defaults[1]
    args.max_new_tokens = args.max_new_tokens or defaults[2]
    if args.check and not args.gpu:
        parser.error("--check goes with --gpu")
    if args.gpu:
        raise SystemExit(
            run_gpu_mode(args, make_images=make_images, run_raw=run_raw, run_embedded=run_embedded)
        )

    settings = Settings(model=args.model)
    engine = load_transformers_engine(build_engine_spec(settings))
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = Path(tmp) / "images"
        images_dir.mkdir()
        paths = make_images(images_dir, args.items)
        warm = [GenerationRequest(decode_image(paths[0].read_bytes()), "warm up")] * args.batch_size
        engine.generate(warm, max_new_tokens=args.max_new_tokens)

        times = {
            "raw": run_raw(paths, engine, args),
            "system": run_celery(images_dir, args)
            if args.mode == "celery"
            else run_embedded(images_dir, engine, args, "system"),
            "naive": run_naive(paths, engine, args),
            "stub": run_embedded(images_dir, FakeEngine(), args, "stub"),
        }
    rate = {name: args.items / seconds for name, seconds in times.items()}
    print(
        f"model={args.model} items={args.items} batch_size={args.batch_size} "
        f"max_new_tokens={args.max_new_tokens} mode={args.mode}"
    )
    print(f"(a) system  {rate['system']:8.2f} items/s")
    print(f"(b) raw     {rate['raw']:8.2f} items/s  (batched generate on pre-decoded images)")
    print(f"(c) naive   {rate['naive']:8.2f} items/s  (one image at a time)")
    print(f"(d) orchestration with a stub engine: {1000 * times['stub'] / args.items:.2f} ms/item")
    print(f"a/b = {rate['system'] / rate['raw']:.2f}   a/c = {rate['system'] / rate['naive']:.2f}")


if __name__ == "__main__":
    main()
