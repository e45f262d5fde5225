"""The ``locate`` kind through the real pipeline with the tiny models, on SQLite and PostgreSQL:
every expression's answer is a box (constrained decoding, even from random weights), mapped
through the frame the checkpoint's processor put the image in back to the image's own pixels
(EXIF orientation and reduced-scale JPEG decoding included); expressions per item from a
manifest; refusals; the CSV, OpenAI and crop outputs."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from jobs.cli.views import ResultFormat, write_results
from jobs.crops import write_crops
from jobs.db import Item, SessionFactory
from jobs.errors import RequestError
from jobs.kinds.locate import TEMPLATES
from jobs.submit.request import SubmitRequest
from model.engine import DelegatingEngine, EngineSpec, GenerationRequest, GenerationResult
from model.fake import FakeEngine
from model.transformers_engine import TransformersEngine, load_engine
from storage import Blobs
from tests.helpers import image_bytes, make_resources, write_images
from workers.local import run_job_locally

EXPRESSIONS = ["the red bus", "the logo on the pack"]
BOX = r"\[(?:0\.\d\d|1\.00), (?:0\.\d\d|1\.00), (?:0\.\d\d|1\.00), (?:0\.\d\d|1\.00)\]"


@pytest.fixture(scope="module", params=["tiny-llava", "tiny-llava-next"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = EngineSpec(model=request.param, cache_dir=tmp_path_factory.mktemp("m"), device="cpu")
    return load_engine(spec)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> TransformersEngine:
    spec = EngineSpec(model="tiny-llava", cache_dir=tmp_path_factory.mktemp("m"), device="cpu")
    return load_engine(spec)


def _locate(sources: list[str], **kw: Any) -> SubmitRequest:
    fields: dict[str, Any] = dict(expressions=EXPRESSIONS, batch_size=8)
    fields.update(kw)
    return SubmitRequest.of("locate", sources, "tiny-llava", **fields)


def _rows(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _rotated_jpeg(upright: tuple[int, int], orientation: int = 6) -> bytes:
    """A JPEG stored a quarter turn off, with the EXIF tag that turns it ``upright``."""
    stored = Image.new("RGB", (upright[1], upright[0]), (200, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


class KnownBoxes(DelegatingEngine):
    """The real engine (its processor, its frames), each answer replaced by a known box."""

    def __init__(self, engine: Any, text: str) -> None:
        super().__init__(engine)
        self.text = text
        self.patterns: list[str | None] = []
        # As the worker asks the real one: a big JPEG is then read at a reduced scale.
        self.input_side = getattr(engine, "input_side", None)

    def generate(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[GenerationResult]:
        self.patterns.append(options.get("pattern"))
        results = super().generate(requests, **options)
        return [
            GenerationResult(self.text, r.tokens_out, True, r.tokens_in, r.frame) for r in results
        ]


def test_every_expression_gets_a_box_in_the_images_pixels_from_the_random_tiny_models(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Any
) -> None:
    folder = tmp_path / "shelf"
    write_images(folder, 3)
    (folder / "turned.jpg").write_bytes(_rotated_jpeg((240, 120)))
    res = make_resources(session_factory, blobs, tiny, gpu_batch_size=8)
    result = run_job_locally(_locate([str(folder)]), res, max_prompt_chars=1000)
    frame = "centre_crop" if tiny.name == "tiny-llava" else "anyres_grid"
    items = _rows(session_factory, result.job_id)
    assert len(items) == 4
    for item in items:
        assert item.status == "succeeded", (item.source, item.error_message)
        width, height = Image.open(item.source).size
        if item.source.endswith("turned.jpg"):
            width, height = 240, 120  # upright, not as stored
        for found, expression in zip(item.result_json, EXPRESSIONS, strict=True):
            assert found["expression"] == expression
            assert re.fullmatch(BOX, found["text"]), found["text"]
            x1, y1, x2, y2 = found["pixels"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert found["frame"]["name"] == frame
            assert found["frame"]["source"] == [width, height]
            assert found["box"] == [
                round(v, 4) for v in (x1 / width, y1 / height, x2 / width, y2 / height)
            ]


def test_a_known_box_maps_through_the_centre_crop_to_the_upright_full_size_pixels(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny_llava: TransformersEngine
) -> None:
    """tiny-llava resizes the shortest edge to 28 and crops 28 x 28 from the middle. A 120 x 60
    image becomes 56 x 28 with 14 columns cut each side, so the canvas box
    [0.25, 0.10, 0.75, 0.90] (x 7..21, y 2.8..25.2) is x (7+14)/56*120 = 45 to 75 and
    y 2.8/28*60 = 6 to 54. A JPEG stored 120 x 240 and turned upright to 240 x 120 by its EXIF
    tag is read at 1/4 scale (60 x 30, which the 28-pixel model needs no more of): the same box
    is x 90..150, y 12..108 of the upright 240 x 120 picture."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "wide.png").write_bytes(image_bytes((120, 60), seed=1))
    (folder / "turned.jpg").write_bytes(_rotated_jpeg((240, 120)))
    engine = KnownBoxes(tiny_llava, "[0.25, 0.10, 0.75, 0.90]")
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    result = run_job_locally(_locate([str(folder)]), res, max_prompt_chars=1000)
    assert engine.patterns == [TEMPLATES["llava"].pattern]  # four expressions, one batch
    turned, wide = _rows(session_factory, result.job_id)
    assert [f["pixels"] for f in wide.result_json] == [[45, 6, 75, 54]] * 2
    assert [f["pixels"] for f in turned.result_json] == [[90, 12, 150, 108]] * 2
    assert wide.result_json[0]["frame"] == {
        "name": "centre_crop",
        "canvas": [28, 28],
        "image_in_canvas": [-14, 0, 42, 28],
        "fed": [120, 60],
        "source": [120, 60],
    }
    assert turned.result_json[0]["frame"]["fed"] == [60, 30]
    # The box touches neither crop border: no flag. One on the left border is flagged.
    assert wide.result_json[0]["flags"] == []
    engine.text = "[0.75, 0.10, 0.00, 0.90]"  # x in the wrong order, and on the crop's border
    again = run_job_locally(_locate([str(folder / "wide.png")]), res, max_prompt_chars=1000)
    (item,) = _rows(session_factory, again.job_id)
    assert item.result_json[0]["pixels"] == [30, 6, 75, 54]
    assert item.result_json[0]["flags"] == ["beyond_crop", "reordered"]

    out = tmp_path / "boxes.csv"
    with session_factory() as session:
        write_results(session, result.job_id, ResultFormat.csv, str(out))
        openai = tmp_path / "out.jsonl"
        write_results(session, result.job_id, ResultFormat.openai, str(openai))
        crops = write_crops(session, result.job_id, str(tmp_path / "crops"), blobs)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["expression_index"], r["expression"]) for r in rows] == [
        ("0", EXPRESSIONS[0]),
        ("1", EXPRESSIONS[1]),
    ] * 2
    assert [(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows[2:]] == [("45", "6", "75", "54")] * 2
    assert (rows[2]["image_width"], rows[2]["frame"]) == ("120", "centre_crop")
    lines = [json.loads(line) for line in openai.read_text().splitlines()]
    content = json.loads(lines[1]["response"]["body"]["choices"][0]["message"]["content"])
    assert content[0]["text"] == "[0.25, 0.10, 0.75, 0.90]" and content[0]["pixels"]
    assert crops.written == 4
    cropped = Image.open(tmp_path / "crops" / "wide.1-the-red-bus.png")
    assert cropped.size == (30, 48)
    assert Image.open(tmp_path / "crops" / "turned.2-the-logo-on-the-pack.png").size == (60, 96)
    # Read under the budgets the worker ran under: an image over them is not decoded for crops.
    with session_factory() as session:
        small = write_crops(
            session, result.job_id, str(tmp_path / "small"), blobs, max_pixels=120 * 60 - 1
        )
    assert (small.written, small.unreadable) == (0, 2)


def test_a_manifest_gives_each_item_its_own_expressions_and_bad_requests_are_refused(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"input": paths[0].name, "expressions": ["the lid", "the label"]})
        + "\n"
        + json.dumps({"input": paths[1].name, "prompt": "the barcode"})
        + "\n"
    )
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    result = run_job_locally(_locate([str(manifest)]), res, max_prompt_chars=1000)
    own, one = _rows(session_factory, result.job_id)
    assert [f["expression"] for f in own.result_json] == ["the lid", "the label"]
    assert [f["expression"] for f in one.result_json] == ["the barcode"]
    # The fake engine says nothing of a processor: the box is read as the image's own.
    assert own.result_json[0]["flags"] == ["frame_unknown"]
    assert own.result_json[0]["frame"]["name"] == "image"

    for fields, code in (
        ({"expressions": []}, "invalid_expressions"),
        ({"expressions": ["x"] * 65}, "invalid_expressions"),
        ({"expressions": ["  "]}, "empty_prompt"),
        ({"template": "qwen"}, "invalid_template"),
    ):
        with pytest.raises(RequestError) as refused:
            run_job_locally(_locate([str(tmp_path)], **fields), res, max_prompt_chars=1000)
        assert refused.value.code == code, fields
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": paths[0].name, "expressions": "the lid"}) + "\n")
    with pytest.raises(RequestError) as refused:
        run_job_locally(_locate([str(bad)]), res, max_prompt_chars=1000)
    assert refused.value.code == "manifest_invalid"


def test_crops_never_write_through_a_symbolic_link_out_of_their_folder(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Crops are named as sidecars are, folders and all, and keep their promise: a folder under
    DIR that links out of it is not written through (counted instead), and a link standing at
    a crop's own name is replaced, not followed."""
    inputs = tmp_path / "in"
    for folder, seed in (("a", 1), ("b", 2)):
        (inputs / folder).mkdir(parents=True)
        (inputs / folder / "x.png").write_bytes(image_bytes((40, 30), seed=seed))
    engine = KnownBoxes(FakeEngine(), "[0.25, 0.10, 0.75, 0.90]")
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    result = run_job_locally(
        _locate([str(inputs)], expressions=["the lid"]), res, max_prompt_chars=1000
    )
    boxes = [f["pixels"] for i in _rows(session_factory, result.job_id) for f in i.result_json]
    assert boxes == [[10, 3, 30, 27]] * 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"not to be overwritten")
    out = tmp_path / "crops"
    out.mkdir()
    (out / "a").symlink_to(elsewhere, target_is_directory=True)
    (out / "b").mkdir()
    (out / "b" / "x.1-the-lid.png").symlink_to(precious)
    with session_factory() as session:
        counts = write_crops(session, result.job_id, str(out), blobs)
    assert list(elsewhere.iterdir()) == []
    assert precious.read_bytes() == b"not to be overwritten"
    written = out / "b" / "x.1-the-lid.png"
    assert not written.is_symlink() and Image.open(written).format == "PNG"
    assert (counts.written, counts.escaping) == (1, 1)
    assert "symbolic link" in counts.summary(str(out))
