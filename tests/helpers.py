"""Small builders shared by tests: images on disk, a migrated database, worker resources."""

from __future__ import annotations

import io
import random
import socket
import threading
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from jobs.db import SessionFactory, make_engine, make_session_factory
from jobs.lifecycle import ItemOutcome
from jobs.migrate import upgrade_database
from jobs.outcome import Outcome
from jobs.settings import Settings
from model.engine import Engine
from storage import Blobs
from workers.resources import WorkerResources


class ListPublisher:
    """A broker that remembers what it was asked to send: messages that name items
    (``batches``) and doorbells (``rings``: model, job). ``oldest`` is what the broker would
    say of the oldest waiting message (None: it cannot tell); ``waiting_count`` how many wait
    (None: it cannot tell)."""

    def __init__(
        self,
        oldest: datetime | None = None,
        *,
        waiting_count: int | None = None,
        bell_limit: int = 64,
    ) -> None:
        self.batches: list[list[str]] = []
        self.stamps: list[datetime | None] = []
        self.models: list[str] = []
        self.rings: list[tuple[str, str | None]] = []
        self._oldest = oldest
        self.waiting_count = waiting_count
        self._bell_limit = bell_limit

    @property
    def bell_limit(self) -> int:
        return self._bell_limit

    def ring(
        self,
        model: str,
        count: int,
        *,
        job_id: str | None = None,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.rings += [(model, job_id)] * count

    def waiting(self, model: str) -> int | None:
        return self.waiting_count

    def publish(
        self,
        job_id: str,
        item_ids: Sequence[str],
        *,
        model: str,
        dispatched_at: datetime | None = None,
    ) -> None:
        self.batches.append(list(item_ids))
        self.stamps.append(dispatched_at)
        self.models.append(model)

    def oldest_waiting(self, model: str) -> datetime | None:
        return self._oldest

    @property
    def item_ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


def submit_captions(
    sf: SessionFactory, blobs: Blobs, tmp_path: Path, n: int = 4, **fields: object
) -> tuple[str, list[str]]:
    """Submits a caption job of ``n`` images with a publisher that only remembers; returns the
    job id and its queued item ids, in order (the doorbells it rang name none)."""
    from jobs.submit.job import submit_job
    from jobs.submit.request import SubmitRequest

    write_images(tmp_path / "c", n)
    publisher = ListPublisher()
    request: dict[str, object] = dict(
        kind="caption",
        sources=[str(tmp_path / "c")],
        model="fake",
        max_new_tokens=8,
        batch_size=100,
    )
    request.update(fields)
    result = submit_job(
        SubmitRequest.of(**request),  # type: ignore[arg-type]
        session_factory=sf,
        blobs=blobs,
        publisher=publisher,
        max_prompt_chars=1000,
    )
    return result.job_id, queued_ids(sf, result.job_id)


def queued_ids(sf: SessionFactory, job_id: str) -> list[str]:
    """The job's queued items, by seq: what its doorbells will claim."""
    from sqlalchemy import select

    from jobs.db import Item

    with sf() as session:
        return list(
            session.scalars(
                select(Item.id)
                .where(Item.job_id == job_id, Item.status == "queued")
                .order_by(Item.seq)
            )
        )


SIZES = [(32, 32), (64, 48), (17, 90), (120, 40), (50, 50), (33, 77), (200, 150), (8, 8)]


def caption_outcome(item_id: str, token: str) -> ItemOutcome:
    """A caption's outcome for a claimed item, under its lease token."""
    return ItemOutcome(item_id, token, Outcome(text="a caption", tokens_out=2))


def image_bytes(size: tuple[int, int], seed: int, fmt: str = "PNG") -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(20):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_images(directory: Path, count: int, *, prefix: str = "img") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"{prefix}{i:03d}.png"
        path.write_bytes(image_bytes(SIZES[i % len(SIZES)], seed=i))
        paths.append(path)
    return paths


def migrated_session_factory(url: str) -> SessionFactory:
    engine = make_engine(url)
    upgrade_database(engine)
    return make_session_factory(engine)


def make_settings(**values: Any) -> Settings:
    """``Settings`` of ``values`` over the defaults; LLAVA_BATCH_* variables are not read."""
    return Settings(**values)


def make_resources(
    session_factory: SessionFactory,
    blobs: Blobs,
    engine: Engine,
    *,
    worker_name: str = "test-worker",
    **settings: Any,
) -> WorkerResources:
    """Resources around ``engine`` that claim any job's items (they serve no named model).
    ``settings``: fields of ``Settings`` over the tests' own defaults: a GPU micro-batch of 4
    (``gpu_batch_size``), one slot with one decode thread, 8 new tokens, a 60 s lease, and
    storage retries from 0.01 s (``storage_retry_base_seconds``) up to eight times that."""
    retry_base = settings.get("storage_retry_base_seconds", 0.01)
    defaults: dict[str, Any] = dict(
        gpu_batch_size=4,
        worker_slots=1,
        decode_threads=1,
        max_new_tokens=8,
        lease_seconds=60,
        storage_retry_base_seconds=retry_base,
        storage_retry_max_seconds=retry_base * 8,
    )
    return WorkerResources(
        settings=make_settings(**{**defaults, **settings}),
        session_factory=session_factory,
        blobs=blobs,
        engine_loader=lambda: engine,
        worker_name=worker_name,
    )


def statuses(session_factory: SessionFactory, job_id: str) -> Sequence[str]:
    from sqlalchemy import select

    from jobs.db import Item

    with session_factory() as session:
        return list(
            session.scalars(select(Item.status).where(Item.job_id == job_id).order_by(Item.seq))
        )


INVOICE_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "description": "Who issued the invoice", "maxLength": 40},
        "number": {"type": "string", "description": "Invoice number", "maxLength": 20},
        "date": {"type": "string", "format": "date"},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        "total": {"type": "number", "minimum": 0, "maximum": 1_000_000},
        "paid": {"type": "boolean"},
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 30}},
            "required": ["name"],
        },
        "line_items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "maxLength": 30},
                    "amount": {"type": "number", "minimum": 0, "maximum": 100_000},
                },
                "required": ["description", "amount"],
            },
        },
    },
    "required": ["vendor", "number", "currency", "total", "line_items"],
}


def write_pdf(path: Path, pages: int, *, title: str = "ACME Corp invoice INV-001") -> Path:
    """A real PDF with text drawn on each page (known field values for a real model)."""
    from PIL import ImageDraw

    images = []
    for number in range(1, pages + 1):
        page = Image.new("RGB", (420, 560), "white")
        draw = ImageDraw.Draw(page)
        draw.text((24, 24), f"{title} - page {number} of {pages}", fill="black")
        draw.text((24, 60), "Date: 2026-11-02   Currency: EUR", fill="black")
        draw.text((24, 96), f"Widget {number}   {10 * number:.2f}", fill="black")
        draw.text((24, 500), "Total: 60.00 EUR", fill="black")
        images.append(page)
    images[0].save(path, "PDF", save_all=True, append_images=images[1:])
    return path


def write_encrypted_pdf(path: Path, source: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt(user_password="secret", owner_password="owner")
    with path.open("wb") as f:
        writer.write(f)
    return path


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = int(probe.getsockname()[1])
        try:
            for port in range(start, start + count):
                with socket.socket() as check:
                    check.bind(("0.0.0.0", port))
        except OSError:
            continue
        return start
    raise AssertionError("no run of free ports")


def scrape_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


# Seconds any one step of a paused test may take on a slow, shared machine.
GATE_WAIT = 60


class Gate:
    """Pauses the n-th call of a function until the test opens it; says when it is reached."""

    def __init__(self, pause_call: int = 1) -> None:
        self.pause_call = pause_call
        self.calls = 0
        self.reached = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                mine = self.calls
            if mine == self.pause_call:
                self.reached.set()
                assert self.opened.wait(GATE_WAIT), "the test never opened the gate"
            return fn(*args, **kwargs)

        return gated
