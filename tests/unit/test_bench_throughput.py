"""bench/throughput.py's own parts, without the model: the catalogue images, the engine wrapper
that times the model inside the system run, the summary and its table, and a whole run of the
system column with a fake engine."""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from model.engine import GenerationRequest
from model.fake import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
# The bench's scripts import each other by name; their folder is on the path only to import them.
sys.path.insert(0, str(ROOT / "bench"))
try:
    import catalogue
    import throughput
    import throughput_columns
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_catalogue_images_are_catalogue_sized_photos_made_deterministically(
    tmp_path: Path,
) -> None:
    paths = catalogue.make_catalogue(tmp_path, 6)
    assert [p.name for p in paths] == [f"p{i:04d}.jpg" for i in range(6)]
    ratios = set()
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 800 <= max(image.size) <= 1600
            ratios.add(round(image.width / image.height, 2))
        # Compresses like a product photo: neither flat colour nor noise.
        assert 40_000 < path.stat().st_size < 600_000
    assert len(ratios) > 1
    (tmp_path / "again").mkdir()
    [first] = catalogue.make_catalogue(tmp_path / "again", 1)
    assert first.read_bytes() == paths[0].read_bytes()


def test_busy_engine_counts_overlapping_calls_once_and_passes_attributes_through() -> None:
    inner = throughput_columns.StubEngine(input_side=336)
    inner.delay_s = 0.3
    busy = throughput_columns.BusyEngine(inner)
    assert busy.name == "fake" and busy.revision is None
    assert busy.input_side == 336  # what the pipeline reads, via __getattr__
    request = GenerationRequest(Image.new("RGB", (8, 8)), "Describe.")
    threads = [
        threading.Thread(target=busy.generate, args=([request],), kwargs={"max_new_tokens": 2})
        for _ in range(2)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    assert busy.calls == 2 and busy.items == 2
    # Two calls of 0.3 s at once: the model was busy about 0.3 s, not 0.6 s.
    assert 0.29 <= busy.busy_seconds <= wall < 0.55
    assert busy.first_start is not None and busy.first_start < busy.last_end
    with pytest.raises(AttributeError):
        _ = busy.no_such_attribute


def _args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "items": 8,
        "batch_size": 4,
        "max_new_tokens": 2,
        "model": "fake",
        "mode": "embedded",
        "images_info": "800 to 1600 px",
        "load_average": [0.5, 0.5, 0.5],
    }
    return argparse.Namespace(**{**values, **overrides})


def test_summary_gives_medians_ratios_and_target_checks() -> None:
    run = {
        "stub": 0.02,
        "system": 1.0,
        "model_busy": 0.99,
        "idle_head": 0.004,
        "idle_tail": 0.002,
        "plain": 2.0,
        "seed": 3.0,
        "raw": 0.5,
    }
    slow = {**run, "system": 9.0, "model_busy": 1.0}
    summary = throughput.summarise([run, run, slow], _args())
    rows = {row["column"]: row for row in summary["rows"]}
    assert rows["system"]["items_per_s"] == 8.0 and rows["system"]["system_ratio"] == 1.0
    assert rows["plain"]["system_ratio"] == 2.0 and rows["seed"]["system_ratio"] == 3.0
    assert summary["orchestration_ms_per_item"] == pytest.approx(1.25)  # (1 - 0.99) / 8 s
    checks = {t["name"]: t["met"] for t in summary["targets"]}
    assert checks == {"a/b": True, "a/c": False, "orchestration_ms": True}
    table = throughput.render(summary)
    assert "| (a) llava-batch" in table and "| (b) plain batched script" in table
    assert "✓ system ÷ plain script: 2.00" in table and "✗ system ÷ seed loop: 3.00" in table


def test_the_system_column_runs_end_to_end_with_a_fake_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the bench's scratch database
    images = tmp_path / "images"
    images.mkdir()
    catalogue.make_catalogue(images, 8)
    busy = throughput_columns.BusyEngine(FakeEngine())
    seconds = throughput_columns.run_embedded(images, busy, _args(), "test")
    assert busy.items == 8 and 0 < busy.busy_seconds < seconds


def test_the_celery_mode_refuses_a_database_with_unfinished_jobs_of_its_model(
    tmp_path: Path,
) -> None:
    """The worker would take batches from such a job in turn with the timed ones."""
    from storage import open_blobs
    from tests.helpers import migrated_session_factory, submit_captions

    sf = migrated_session_factory(f"sqlite:///{tmp_path / 'bench.sqlite3'}")
    throughput_columns.refuse_unfinished_jobs(sf, "fake")  # empty: the run goes on
    submit_captions(sf, open_blobs(str(tmp_path / "blobs")), tmp_path, n=2)
    throughput_columns.refuse_unfinished_jobs(sf, "another-model")  # not this model's
    with pytest.raises(SystemExit, match="1 unfinished job"):
        throughput_columns.refuse_unfinished_jobs(sf, "fake")


def test_a_job_s_stored_inputs_are_forgotten_so_the_next_submit_stores_them_afresh(
    tmp_path: Path,
) -> None:
    """Both timed submits of the celery mode send the same photos: without this, the second
    would find them stored by the first and skip writing them."""
    from jobs.db import Job
    from jobs.lifecycle.requests import cancel_job
    from storage import open_blobs
    from tests.helpers import migrated_session_factory, submit_captions

    sf = migrated_session_factory(f"sqlite:///{tmp_path / 'bench.sqlite3'}")
    blobs = open_blobs(str(tmp_path / "blobs"))
    job_id, _ = submit_captions(sf, blobs, tmp_path, n=3)
    cancel_job(sf, job_id)  # ended: only an ended job is deleted
    stored = sorted((tmp_path / "blobs").rglob("*.png"))
    assert len(stored) == 3
    throughput_columns.forget_stored_inputs(sf, blobs, job_id, batch=2)
    assert not any(path.exists() for path in stored)
    with sf() as session:  # by the product's deletion: the job goes with its photos
        assert session.get(Job, job_id) is None
    again, _ = submit_captions(sf, blobs, tmp_path, n=3)  # the same photos: written again
    assert all(path.exists() for path in stored)

    # Photos another job still uses stay stored: the run stops rather than time the shortcut.
    cancel_job(sf, again)
    other, _ = submit_captions(sf, blobs, tmp_path, n=3)
    with pytest.raises(SystemExit, match=r"3 of job .*photos stay stored"):
        throughput_columns.forget_stored_inputs(sf, blobs, again, batch=2)
    assert all(path.exists() for path in stored)
    with sf() as session:
        assert session.get(Job, other) is not None
