"""Questions per image: what the ``ask`` kind costs as questions grow, measured in one run.

    python bench/questions.py [--items 32] [--questions 5] [--batch-size 8] [--max-new-tokens 16]

Runs the same images through the embedded pipeline (SQLite, local storage, in-process worker)
as an ``ask`` job with 1 question, then with ``--questions`` questions per image, with each
image encoded once for all its questions and, for comparison, once per question (the model's
own path). Reports items/s and questions/s. The vision tower of the tiny model is small, so the
encode-once gain here is a floor; on LLaVA-1.5-7B the image is 576 tokens through a ViT-L.
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

from throughput import make_images  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.submit.request import SubmitRequest  # noqa: E402
from model.engine import Engine  # noqa: E402
from storage import open_blobs  # noqa: E402
from workers.local import run_job_locally  # noqa: E402
from workers.resources import WorkerResources, build_engine_spec, load_transformers_engine  # noqa: E402

QUESTIONS = [
    "What product is this?",
    "What brand is it?",
    "Is there text on the pack?",
    "What colour is it?",
    "Is it photographed on a white background?",
    "How many items are shown?",
    "Is the product damaged?",
    "What material is it made of?",
]


def run_ask(images: Path, engine: Engine, args: argparse.Namespace, questions: int) -> float:
    from jobs.db import make_engine, make_session_factory
    from jobs.migrate import upgrade_database

    home = Path(tempfile.mkdtemp(prefix="bench-ask-"))
    db = make_engine(f"sqlite:///{home / 'bench.sqlite3'}")
    upgrade_database(db)
    settings = Settings.from_env(
        gpu_batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        worker_slots=1,
        decode_threads=1,
    )
    res = WorkerResources(
        settings=settings,
        session_factory=make_session_factory(db),
        blobs=open_blobs(str(home / "blobs")),
        engine_loader=lambda: engine,
    )
    request = SubmitRequest.of(
        "ask",
        [str(images)],
        engine.name,
        questions=QUESTIONS[:questions],
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    run_job_locally(request, res, max_prompt_chars=4000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--questions", type=int, default=5, choices=range(2, len(QUESTIONS) + 1))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--model", default="tiny-llava")
    args = parser.parse_args()

    engine: Any = load_transformers_engine(build_engine_spec(Settings.from_env(model=args.model)))
    model = engine._model
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        make_images(images, args.items)
        run_ask(images, engine, args, 1)  # warm up
        one = run_ask(images, engine, args, 1)
        many = run_ask(images, engine, args, args.questions)
        # The model's own path: every request encodes its image.
        model._supports_mm_encoder_outputs = lambda: False
        many_unshared = run_ask(images, engine, args, args.questions)
    n, q = args.items, args.questions
    print(
        f"model={args.model} items={n} batch_size={args.batch_size} "
        f"max_new_tokens={args.max_new_tokens}"
    )
    print(f"1 question          {n / one:8.2f} items/s  {n / one:8.2f} questions/s")
    print(f"{q} questions         {n / many:8.2f} items/s  {n * q / many:8.2f} questions/s")
    print(
        f"{q} questions, image encoded per question "
        f"{n / many_unshared:8.2f} items/s  {n * q / many_unshared:8.2f} questions/s"
    )
    print(f"encode once vs per question: {many_unshared / many:.2f}x")


if __name__ == "__main__":
    main()
