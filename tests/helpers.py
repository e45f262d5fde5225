"""Small builders shared by tests: images on disk, a migrated database, worker resources."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from jobs.db import SessionFactory, make_engine, make_session_factory
from jobs.migrate import upgrade_database
from model.engine import Engine
from storage import Blobs
from workers.resources import WorkerResources

SIZES = [(32, 32), (64, 48), (17, 90), (120, 40), (50, 50), (33, 77), (200, 150), (8, 8)]


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


def make_resources(
    session_factory: SessionFactory,
    blobs: Blobs,
    engine: Engine,
    *,
    batch_size: int = 4,
    lease_seconds: int = 60,
    max_attempts: int = 3,
    worker_name: str = "test-worker",
) -> WorkerResources:
    return WorkerResources(
        session_factory=session_factory,
        blobs=blobs,
        engine_loader=lambda: engine,
        batch_size=batch_size,
        max_new_tokens=8,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        max_image_pixels=50_000_000,
        worker_name=worker_name,
    )


def statuses(session_factory: SessionFactory, job_id: str) -> Sequence[str]:
    from sqlalchemy import select

    from jobs.db import Item

    with session_factory() as session:
        return list(
            session.scalars(select(Item.status).where(Item.job_id == job_id).order_by(Item.seq))
        )
