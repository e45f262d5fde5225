"""Budgets and containment on the worker's decode path, with the fake engine on both databases:
a hostile input costs no more than its own item, and the worker holds only about two model
batches of decoded inputs."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

import workers.pipeline
from jobs.db import Item, Job, SessionFactory
from jobs.states import ItemStatus, JobStatus
from jobs.submit.request import SubmitRequest
from model.engine import GenerationRequest, GenerationResult
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import INVOICE_SCHEMA, make_resources, write_images, write_pdf
from workers.ahead import Lookahead
from workers.local import run_job_locally


def _request(kind: str, directory: Path, **kw: Any) -> SubmitRequest:
    fields: dict[str, Any] = dict(
        kind=kind, sources=[str(directory)], model="fake", max_new_tokens=400, batch_size=4
    )
    if kind == "extract":
        fields["schema"] = INVOICE_SCHEMA
    fields.update(kw)
    return SubmitRequest.of(**fields)


def _items(sf: SessionFactory, job_id: str) -> dict[str, Item]:
    with sf() as session:
        rows = session.scalars(select(Item).where(Item.job_id == job_id))
        return {Path(item.source).name: item for item in rows}


def _job_status(sf: SessionFactory, job_id: str) -> str:
    with sf() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def page_bomb(path: Path, pages: int = 50, side_pt: float = 3500) -> Path:
    """The issue's page bomb: a few KB, each page under the per-page limit at 144 dpi."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    for _ in range(pages):
        document.new_page(side_pt, side_pt).close()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    path.write_bytes(buffer.getvalue())
    return path


def test_page_bomb_fails_its_own_item_before_any_page_is_rendered(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, render_calls: list[int]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    page_bomb(inbox / "bomb.pdf")
    write_pdf(inbox / "invoice.pdf", 2)
    res = make_resources(session_factory, blobs, FakeEngine())
    result = run_job_locally(_request("extract", inbox), res, max_prompt_chars=4000)
    items = _items(session_factory, result.job_id)
    bomb = items["bomb.pdf"]
    assert (bomb.status, bomb.error_code) == (ItemStatus.failed, "document_too_large")
    assert bomb.error_message and "LLAVA_BATCH_MAX_ITEM_PIXELS" in bomb.error_message
    assert "200000000" in bomb.error_message
    assert items["invoice.pdf"].status == ItemStatus.succeeded
    assert len(render_calls) == 2  # the invoice's two pages; not one page of the bomb
    assert _job_status(session_factory, result.job_id) == JobStatus.completed


def _gif_cut_at_a_frame_separator() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (8, 8), 1).save(buffer, format="GIF")
    return buffer.getvalue()[:-1] + b","


def _dds_with_unknown_pixel_format() -> bytes:
    import struct

    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I", 32, 0x4) + b"ZZZZ" + b"\0" * 20
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + bytes(64)


def test_decoder_escapes_fail_only_their_items(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue"
    write_images(catalogue, 3)
    (catalogue / "frames.gif").write_bytes(_gif_cut_at_a_frame_separator())
    (catalogue / "texture.png").write_bytes(_dds_with_unknown_pixel_format())
    res = make_resources(session_factory, blobs, FakeEngine())
    result = run_job_locally(_request("caption", catalogue), res, max_prompt_chars=4000)
    items = _items(session_factory, result.job_id)
    assert items["frames.gif"].error_code == "image_decode_error"
    assert items["texture.png"].error_code == "unsupported_format"
    for name in ("frames.gif", "texture.png"):
        assert items[name].status == ItemStatus.failed and items[name].error_message
    good = [i for name, i in items.items() if name.startswith("img")]
    assert len(good) == 3 and all(i.status == ItemStatus.succeeded for i in good)
    assert _job_status(session_factory, result.job_id) == JobStatus.completed


@pytest.mark.parametrize("where", ["plan_units", "decode"])
def test_an_unexpected_exception_is_that_items_internal_error(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    catalogue = tmp_path / "catalogue"
    write_images(catalogue, 3)
    victim = (catalogue / "img001.png").read_bytes()
    if where == "plan_units":
        real_plan = workers.pipeline.plan_units

        def plan(item: Any, data: bytes, *rest: Any) -> Any:
            if data == victim:
                raise RuntimeError("a bug while planning")
            return real_plan(item, data, *rest)

        monkeypatch.setattr(workers.pipeline, "plan_units", plan)
    else:
        import model.images

        real_decode = model.images.decode_image

        def decode(data: bytes, **kwargs: Any) -> Image.Image:
            if data == victim:
                raise RuntimeError("a bug while decoding")
            return real_decode(data, **kwargs)

        monkeypatch.setattr(model.images, "decode_image", decode)
    res = make_resources(session_factory, blobs, FakeEngine())
    result = run_job_locally(_request("caption", catalogue), res, max_prompt_chars=4000)
    items = _items(session_factory, result.job_id)
    bad = items["img001.png"]
    assert (bad.status, bad.error_code) == (ItemStatus.failed, "internal_error")
    assert bad.error_message and "RuntimeError" in bad.error_message
    assert items["img000.png"].status == items["img002.png"].status == ItemStatus.succeeded
    assert _job_status(session_factory, result.job_id) == JobStatus.completed


def test_input_over_the_byte_limit_fails_its_own_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue"
    paths = write_images(catalogue, 3)
    sizes = {p.name: p.stat().st_size for p in paths}
    biggest = max(sizes, key=lambda name: sizes[name])
    over = sorted(sizes.values())[-2]  # only the biggest is over
    res = make_resources(session_factory, blobs, FakeEngine(), max_input_bytes=over)
    result = run_job_locally(_request("caption", catalogue), res, max_prompt_chars=4000)
    items = _items(session_factory, result.job_id)
    assert (items[biggest].status, items[biggest].error_code) == ("failed", "input_too_large")
    assert sum(i.status == ItemStatus.succeeded for i in items.values()) == 2


class RecordingEngine(FakeEngine):
    """Records, at each model call, how many units had been decoded or rendered by then."""

    def __init__(self, decoded: list[int], delay_s: float = 0.0) -> None:
        super().__init__(delay_s=delay_s)
        self.decoded = decoded
        self.generated = 0
        self.ahead: list[int] = []  # decoded minus generated before each call

    def generate(
        self, requests: Sequence[GenerationRequest], **kwargs: Any
    ) -> list[GenerationResult]:
        self.ahead.append(len(self.decoded) - self.generated)
        self.generated += len(requests)
        return super().generate(requests, **kwargs)


@pytest.fixture
def lookaheads(monkeypatch: pytest.MonkeyPatch) -> list[Lookahead]:
    made: list[Lookahead] = []

    class Recorded(Lookahead):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(workers.pipeline, "Lookahead", Recorded)
    return made


def test_one_large_message_is_decoded_at_most_two_model_batches_ahead(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lookaheads: list[Lookahead],
) -> None:
    import model.images

    decoded: list[int] = []
    real_decode = model.images.decode_image

    def counting(data: bytes, **kwargs: Any) -> Image.Image:
        decoded.append(1)
        return real_decode(data, **kwargs)

    monkeypatch.setattr(model.images, "decode_image", counting)
    write_images(tmp_path / "catalogue", 40)
    engine = RecordingEngine(decoded, delay_s=0.02)
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=4)
    request = _request("caption", tmp_path / "catalogue", batch_size=40)
    result = run_job_locally(request, res, max_prompt_chars=4000)
    assert [i.status for i in _items(session_factory, result.job_id).values()] == ["succeeded"] * 40
    assert engine.calls == [4] * 10
    # Before each model call: the batch it gets plus at most one more batch decoded.
    assert max(engine.ahead) <= 2 * 4, engine.ahead
    [ahead] = lookaheads
    assert ahead.peak_units <= 8 and ahead.held_units == 0 and ahead.held_pixels == 0


def test_the_pixel_budget_bounds_what_is_held_and_shrinks_model_batches(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, lookaheads: list[Lookahead]
) -> None:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for i in range(10):
        Image.new("RGB", (100, 100), (i * 20, 0, 0)).save(catalogue / f"p{i}.png")
    engine = FakeEngine()
    res = make_resources(
        session_factory, blobs, engine, gpu_batch_size=4, max_batch_pixels=3 * 100 * 100
    )
    request = _request("caption", catalogue, batch_size=10)
    result = run_job_locally(request, res, max_prompt_chars=4000)
    assert all(i.status == "succeeded" for i in _items(session_factory, result.job_id).values())
    assert engine.calls == [3, 3, 3, 1]
    [ahead] = lookaheads
    assert ahead.peak_pixels <= res.settings.max_batch_pixels


def test_two_slots_share_the_budget_of_about_two_model_batches(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, lookaheads: list[Lookahead]
) -> None:
    """With two slots, each holds one model batch and half the pixel budget, so the worker as
    a whole holds about two model batches, as one slot alone does."""
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for i in range(16):
        Image.new("RGB", (100, 100), (i * 10, 0, 0)).save(catalogue / f"p{i:02d}.png")
    res = make_resources(
        session_factory,
        blobs,
        FakeEngine(),
        gpu_batch_size=4,
        worker_slots=2,
        max_batch_pixels=8 * 100 * 100,
    )
    request = _request("caption", catalogue, batch_size=8)
    result = run_job_locally(request, res, max_prompt_chars=4000)
    assert all(i.status == "succeeded" for i in _items(session_factory, result.job_id).values())
    assert len(lookaheads) == 2
    for ahead in lookaheads:
        assert (ahead.max_units, ahead.max_pixels) == (4, 4 * 100 * 100)
        assert ahead.peak_units <= 4 and ahead.peak_pixels <= 4 * 100 * 100


def test_a_single_input_over_the_batch_budget_still_goes_through(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "catalogue", 3)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=4, max_batch_pixels=1)
    request = _request("caption", tmp_path / "catalogue")
    result = run_job_locally(request, res, max_prompt_chars=4000)
    assert all(i.status == "succeeded" for i in _items(session_factory, result.job_id).values())
    assert engine.calls == [1, 1, 1]


def test_document_pages_are_rendered_lazily_into_model_batches(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, render_calls: list[int]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_pdf(inbox / "long.pdf", 9)
    engine = RecordingEngine(render_calls, delay_s=0.05)
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=2)
    result = run_job_locally(_request("extract", inbox), res, max_prompt_chars=4000)
    [item] = _items(session_factory, result.job_id).values()
    assert item.status == ItemStatus.succeeded and item.result_json
    assert engine.calls == [2, 2, 2, 2, 1]
    assert max(engine.ahead) <= 2 * 2, engine.ahead
    assert len(render_calls) == 9


def test_decoding_runs_on_the_slots_few_threads_below_the_models_priority(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's thread must not queue behind decode threads for the GIL or a core
    (workers.helpers): a slot decodes on ``decode_threads`` threads, never more at once, and on
    Linux they run at a lower priority than the thread that calls the model."""
    import os
    import sys
    import threading
    import time

    import model.images

    lock = threading.Lock()
    running = 0
    seen: list[tuple[int, str, int]] = []  # concurrent decodes, thread name, its priority
    real_decode = model.images.decode_image

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def watched(data: bytes, **kwargs: Any) -> Image.Image:
        nonlocal running
        with lock:
            running += 1
            seen.append((running, threading.current_thread().name, priority()))
        time.sleep(0.01)  # long enough for every free decode thread to start one
        with lock:
            running -= 1
        return real_decode(data, **kwargs)

    class Engine(FakeEngine):
        model_priority: int | None = None

        def generate(self, requests: Sequence[GenerationRequest], **kwargs: Any) -> Any:
            self.model_priority = priority()
            return super().generate(requests, **kwargs)

    monkeypatch.setattr(model.images, "decode_image", watched)
    write_images(tmp_path / "catalogue", 16)
    engine = Engine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=4, decode_threads=2)
    result = run_job_locally(
        _request("caption", tmp_path / "catalogue", batch_size=16), res, max_prompt_chars=4000
    )
    assert all(i.status == "succeeded" for i in _items(session_factory, result.job_id).values())
    assert len(seen) == 16
    assert max(n for n, _, _ in seen) <= 2, seen
    assert {name.split("_")[0] for _, name, _ in seen} == {"llava-batch-decode"}
    if sys.platform == "linux":
        assert engine.model_priority is not None
        assert {p for _, _, p in seen} == {min(19, engine.model_priority + 10)}
