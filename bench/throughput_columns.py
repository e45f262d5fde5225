"""The columns of ``bench/throughput.py``: each runs the same images and prompt one way and
returns its wall seconds. ``BusyEngine`` times the model inside the system run."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.kinds.caption import DEFAULT_PROMPT
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest
from model.engine import DelegatingEngine, Engine, GenerationRequest, GenerationResult
from model.fake import FakeEngine
from model.images import decode_image
from workers.local import run_job_locally
from workers.resources import build_resources

# The caption kind's default, given explicitly to every column (and to the system's job).
PROMPT = DEFAULT_PROMPT


class BusyEngine(DelegatingEngine):
    """Implements ``model.engine.Engine`` around another engine, and measures the wall time
    during which at least one ``generate`` call is in flight (the model's forward with its own
    preprocessing): the union of the calls' intervals, not their sum, since a worker's slots
    may call ``generate`` from two threads at once. Other attributes (``input_side``,
    ``suggested_batch_size``, ``count_prompt_tokens``, …) go to the wrapped engine, so the
    pipeline sees the same engine."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._since = 0.0
        self.busy_seconds = 0.0
        self.calls = 0
        self.items = 0
        self.first_start: float | None = None  # perf_counter of the first call's start
        self.last_end = 0.0  # and of the last call's end

    def generate(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[GenerationResult]:
        with self._lock:
            if self._in_flight == 0:
                self._since = time.perf_counter()
                if self.first_start is None:
                    self.first_start = self._since
            self._in_flight += 1
            self.calls += 1
            self.items += len(requests)
        try:
            return super().generate(requests, **options)
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self.last_end = time.perf_counter()
                    self.busy_seconds += self.last_end - self._since

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never recurse on our own attributes (copy, pickle)
            raise AttributeError(name)
        return getattr(self._engine, name)


def caption_request(images_dir: Path, model: str, args: argparse.Namespace) -> SubmitRequest:
    """The system columns' job: the folder's images, the bench's prompt and sizes."""
    return SubmitRequest.of(
        kind="caption",
        sources=[str(images_dir)],
        model=model,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        prompt=PROMPT,
    )


def run_embedded(images_dir: Path, engine: Engine, args: argparse.Namespace, tag: str) -> float:
    """(a) The system, embedded: submit (SQLite, local storage) → in-process worker → rows."""
    from jobs.db import open_database
    from jobs.migrate import upgrade_database
    from jobs.settings import Settings

    home = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    # The product's own configuration (its defaults: worker slots, budgets), with the bench's
    # batch sizes; the environment's LLAVA_BATCH_* apply too, as they would to `run`.
    settings = Settings.from_env(
        home=home,
        database_url="",
        storage_url="",
        model=engine.name,
        message_size=args.batch_size,
        gpu_batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    db = open_database(settings)
    upgrade_database(db)
    res = build_resources(settings, engine_loader=lambda: engine)
    request = caption_request(images_dir, engine.name, args)
    try:
        start = time.perf_counter()
        result = run_job_locally(request, res, max_prompt_chars=4000)
        elapsed = time.perf_counter() - start
    finally:
        db.dispose()
        shutil.rmtree(home, ignore_errors=True)  # a copy of every input: do not pile them up
    assert result.item_count == args.items, result
    return elapsed


def run_celery(images_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """(a) The system with a real ``llava-batch worker`` process and the DB, broker and storage
    of LLAVA_BATCH_*, to the last result in the database (the job's row polled every 20 ms;
    ``submit --wait`` polls once a second, which would add up to a second of the bench's own).
    Two submits to one worker, after an untimed job of two batches that warms it and this
    process: ``system``, from ``submit_job`` called here with the product's settings; ``cli``,
    from the start of a ``llava-batch submit`` process, whose Python start and imports (about
    0.8 s here) are the CLI's, whatever the job's size. Both submit the same photos, and each
    stores them afresh (``forget_stored_inputs``), as a catalogue's first submit does."""
    from sqlalchemy import select

    from jobs.db import Job, make_session_factory, open_database
    from jobs.dispatch import CeleryPublisher
    from jobs.settings import Settings
    from jobs.states import TERMINAL_JOB_STATES
    from storage import open_blobs

    cli = str(Path(sys.executable).parent / "llava-batch")
    env = {
        **os.environ,
        "LLAVA_BATCH_BATCH_SIZE": str(args.batch_size),
        "LLAVA_BATCH_GPU_BATCH_SIZE": str(args.batch_size),
        "LLAVA_BATCH_MAX_NEW_TOKENS": str(args.max_new_tokens),
        "LLAVA_BATCH_MODEL": args.model,
        # A queue of this run's own: doorbells an earlier run left in the broker (a job ends
        # with some in its queue) are not counted against this run's bell limit.
        "LLAVA_BATCH_QUEUE": f"llava-batch-bench-{uuid.uuid4().hex[:8]}",
    }
    subprocess.run([cli, "db", "upgrade"], env=env, check=True)
    settings = Settings.from_env(env)
    db = open_database(settings)
    session_factory = make_session_factory(db)
    blobs = open_blobs(settings.resolved_storage_url)
    refuse_unfinished_jobs(session_factory, args.model)

    def forget(job_id: str) -> None:
        forget_stored_inputs(session_factory, blobs, job_id, batch=settings.purge_batch)

    def until_done(job_id: str) -> str:
        with session_factory() as session:
            while True:
                status = session.scalar(select(Job.status).where(Job.id == job_id))
                session.rollback()  # a fresh snapshot for the next poll
                if status in TERMINAL_JOB_STATES:
                    assert status == "completed", status
                    return job_id
                time.sleep(0.02)

    log = open(Path(tempfile.mkdtemp()) / "worker.log", "w+b")  # noqa: SIM115
    worker = subprocess.Popen([cli, "worker", "--no-sweep"], env=env, stdout=log, stderr=log)
    seconds: dict[str, float] = {}
    try:
        while b"worker ready" not in Path(log.name).read_bytes():
            if worker.poll() is not None:
                raise SystemExit(Path(log.name).read_text())
            time.sleep(0.2)

        def submit(folder: Path) -> str:
            result = submit_job(
                caption_request(folder, args.model, args),
                session_factory=session_factory,
                blobs=blobs,
                publisher=CeleryPublisher(settings.broker_url, settings.queue),
                max_prompt_chars=settings.max_prompt_chars,
            )
            assert result.item_count == len(list(folder.iterdir())), result
            return result.job_id

        # Untimed, as the stub run is for the embedded column: a small job first, so this
        # process's and the worker's first calls (connections, the Celery producer, statement
        # compiles, the model's first batches) are paid before the clock starts.
        warm = Path(tempfile.mkdtemp(prefix="bench-warm-"))
        for path in sorted(images_dir.iterdir())[: 2 * args.batch_size]:
            shutil.copy(path, warm / path.name)
        # Each timed submit stores its photos afresh, as a catalogue's first submit does: the
        # job that stored the same photos before is deleted with them first, or the store
        # would find them there and skip writing them.
        forget(until_done(submit(warm)))
        shutil.rmtree(warm)
        start = time.perf_counter()
        job_id = until_done(submit(images_dir))
        seconds["system"] = time.perf_counter() - start
        forget(job_id)

        start = time.perf_counter()
        out = subprocess.run(
            [cli, "submit", "caption", str(images_dir), "--prompt", PROMPT, "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        submitted = json.loads(out.stdout.splitlines()[0])
        until_done(submitted["job_id"])
        seconds["cli"] = time.perf_counter() - start
        forget(submitted["job_id"])  # for the next run
        assert submitted["items"] == args.items, submitted
    finally:
        worker.terminate()
        worker.wait(60)
        db.dispose()
        _drop_queue(settings)
    return seconds


def forget_stored_inputs(session_factory: Any, blobs: Any, job_id: str, *, batch: int) -> None:
    """Deletes an ended job by the product's own deletion (``delete_jobs``: its rows, then the
    stored inputs no other job references), so that the next submit of the same photos writes
    them again instead of finding them stored. Stops the run when some of its photos stay, still
    referenced by another job of the database: the next submit would be timed on the shortcut."""
    from jobs.retention.purge import delete_jobs

    report = delete_jobs(session_factory, blobs, [job_id], batch=batch)
    if not report.finished or report.inputs_deleted < report.items_deleted:
        raise SystemExit(
            f"{report.items_deleted - report.inputs_deleted} of job {job_id}'s photos stay "
            "stored: another job of this database uses them, and the next submit would find "
            "them there. Point LLAVA_BATCH_DATABASE_URL at a database of the bench's own."
        )


def refuse_unfinished_jobs(session_factory: Any, model: str) -> None:
    """Stops the run when the database holds jobs for ``model`` that have not ended: workers
    take batches from every such job in turn, so the timed jobs would share the worker with
    them (one such run measured 140 s for 6.4 s of work). Use a database of the bench's own."""
    from sqlalchemy import func, select

    from jobs.db import Job
    from jobs.states import TERMINAL_JOB_STATES

    with session_factory() as session:
        unfinished = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.model == model, Job.status.not_in(TERMINAL_JOB_STATES))
        )
    if unfinished:
        raise SystemExit(
            f"The database holds {unfinished} unfinished job(s) for {model}; the worker would "
            "serve them beside the timed ones. Point LLAVA_BATCH_DATABASE_URL at a database "
            "of the bench's own."
        )


def _drop_queue(settings: Any) -> None:
    """Deletes this run's broker queue and the doorbells left in it (Redis only)."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        import redis

        from jobs.fleet import queue_for

        client = redis.Redis.from_url(settings.broker_url)
        queue = queue_for(settings.queue, settings.model)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()


def _full_decode(path: Path) -> Image.Image:
    """What a script does: read the file, decode it at full size (no JPEG draft), RGB."""
    return Image.open(io.BytesIO(path.read_bytes())).convert("RGB")


def run_plain(paths: list[Path], engine: Engine, args: argparse.Namespace) -> float:
    """(b) The plain batched script: per batch, read and fully decode, then ``generate`` (which
    preprocesses); serial, timed end to end."""
    start = time.perf_counter()
    for i in range(0, len(paths), args.batch_size):
        batch = [GenerationRequest(_full_decode(p), PROMPT) for p in paths[i : i + args.batch_size]]
        engine.generate(batch, max_new_tokens=args.max_new_tokens)
    return time.perf_counter() - start


def run_seed_loop(paths: list[Path], engine: Engine, args: argparse.Namespace) -> float:
    """(c) The seed-style loop: read, fully decode and ``generate`` one image at a time."""
    start = time.perf_counter()
    for path in paths:
        engine.generate(
            [GenerationRequest(_full_decode(path), PROMPT)], max_new_tokens=args.max_new_tokens
        )
    return time.perf_counter() - start


def run_raw(paths: list[Path], engine: Engine, args: argparse.Namespace) -> float:
    """Information, not a target: ``generate`` alone over images decoded beforehand as the
    worker decodes them (reduced-scale JPEG draft included). A ceiling no pipeline can beat."""
    side = getattr(engine, "input_side", None)
    images = [decode_image(p.read_bytes(), min_side=side) for p in paths]
    start = time.perf_counter()
    for i in range(0, len(images), args.batch_size):
        batch = [GenerationRequest(image, PROMPT) for image in images[i : i + args.batch_size]]
        engine.generate(batch, max_new_tokens=args.max_new_tokens)
    return time.perf_counter() - start


class StubEngine(FakeEngine):
    """``model.fake.FakeEngine`` (answers at once) with the real engine's ``input_side``, so the
    system path decodes as it does for the model: the CPU cost of the path without a model."""

    def __init__(self, input_side: int | None) -> None:
        super().__init__()
        self.input_side = input_side
