"""The review page's pictures (docs/review.md#pictures): served by item id only, always
re-encoded by us as a JPEG under the worker's decode budgets, never the input's own bytes; a
hostile input (SVG or HTML named .png, a decompression bomb, a 60-page PDF) costs no more than
its own thumbnail and gets a placeholder with its reason; thumbnails are cached after the first
render."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from jobs.db import Item, ItemInput, SessionFactory
from jobs.web.images import THUMB_SIDE, Budgets, picture_of
from storage import Blobs
from tests.helpers import image_bytes, submit_captions, write_pdf

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BUDGETS = Budgets(
    max_input_bytes=256 << 20, max_image_pixels=50_000_000, max_item_pixels=200_000_000
)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"


def _bomb() -> bytes:
    """A 9000 x 9000 PNG (81 M pixels, over the 50 M budget) of a few kilobytes."""
    out = io.BytesIO()
    Image.new("1", (9_000, 9_000)).save(out, format="PNG")
    return out.getvalue()


def _jpeg_side(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return max(image.size)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (SVG, "unsupported_format"),
        (HTML, "unsupported_format"),
        (b"", "empty_input"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image_decode_error"),
    ],
    ids=["svg", "html", "empty", "corrupt-png"],
)
def test_what_is_not_a_picture_gets_a_placeholder_with_its_reason(
    data: bytes, problem: str
) -> None:
    picture = picture_of(data, page=1, side=THUMB_SIDE, budgets=BUDGETS)
    assert picture.problem == problem
    assert _jpeg_side(picture.data) == THUMB_SIDE  # our placeholder, never the input's bytes


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = _bomb()
    started = time.perf_counter()
    picture = picture_of(bomb, page=1, side=THUMB_SIDE, budgets=BUDGETS)
    assert picture.problem == "image_too_large"
    assert time.perf_counter() - started < 1.0  # decoded, it would be 81 M pixels


def test_a_60_page_pdf_costs_one_small_page(tmp_path: Path, render_calls: list[int]) -> None:
    pdf = write_pdf(tmp_path / "long.pdf", 60).read_bytes()
    picture = picture_of(pdf, page=1, side=THUMB_SIDE, budgets=BUDGETS)
    assert picture.problem is None
    assert _jpeg_side(picture.data) <= THUMB_SIDE
    assert render_calls == [1]
    # and the item page's page 60 is that one page too
    assert picture_of(pdf, page=60, side=2048, budgets=BUDGETS).problem is None
    assert render_calls == [1, 1]
    assert picture_of(pdf, page=61, side=2048, budgets=BUDGETS).problem == "pdf_page_out_of_range"


def test_an_input_over_the_byte_budget_is_not_decoded() -> None:
    small = Budgets(max_input_bytes=10, max_image_pixels=50_000_000, max_item_pixels=1)
    picture = picture_of(image_bytes((20, 20), seed=1), page=1, side=THUMB_SIDE, budgets=small)
    assert picture.problem == "input_too_large"


@SQLITE_ONLY
def test_pictures_are_served_by_item_id_re_encoded_and_cached(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a-photo.png").write_bytes(image_bytes((600, 300), seed=3))
    (folder / "b-drawing.png").write_bytes(SVG)  # named .png: submitted, stored as it is
    (folder / "c-bomb.png").write_bytes(_bomb())
    _, ids = submit_captions(session_factory, blobs, tmp_path, n=0, sources=[str(folder)])
    photo, drawing, bomb = ids
    reads: list[str] = []
    real_read = blobs.read_uri

    def counted(uri: str, **kwargs: Any) -> bytes:
        reads.append(uri)
        return real_read(uri, **kwargs)

    monkeypatch.setattr(blobs, "read_uri", counted)

    first = client.get(f"/items/{photo}/thumb")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/jpeg"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in first.headers["content-security-policy"]
    assert _jpeg_side(first.content) == THUMB_SIDE
    assert client.get(f"/items/{photo}/thumb").content == first.content
    assert len(reads) == 1  # the second came from the cache
    assert list((tmp_path / "home" / "thumbnails").rglob("*.jpg"))

    full = client.get(f"/items/{photo}/image")
    assert full.headers["content-type"] == "image/jpeg" and _jpeg_side(full.content) == 600

    for item, problem in ((drawing, "unsupported_format"), (bomb, "image_too_large")):
        for url in (f"/items/{item}/thumb", f"/items/{item}/image"):
            response = client.get(url)
            assert response.status_code == 200, url
            assert response.headers["content-type"] == "image/jpeg", url
            assert response.headers["x-picture-problem"] == problem, url
            assert b"<svg" not in response.content
    reads.clear()
    client.get(f"/items/{bomb}/thumb")
    assert reads == []  # judged once: the placeholder is cached too

    # A page the input does not have says so, and is not cached: its number is the asker's,
    # not the input's, and one file per number asked for would fill the disk.
    cache = tmp_path / "home" / "thumbnails"
    before = sorted(cache.rglob("*"))
    for page in (2, 3, 2**31 - 1):
        for item in (photo, bomb):
            past = client.get(f"/items/{item}/thumb?page={page}")
            assert past.headers["x-picture-problem"] == "pdf_page_out_of_range"
    assert sorted(cache.rglob("*")) == before

    assert client.get("/items/no-such-item/thumb").status_code == 404
    for bad in ("page=x", "page=0", "input=-1"):
        assert client.get(f"/items/{photo}/thumb?{bad}").status_code == 400, bad

    # an OpenAI request's second image is the item's input 2
    with session_factory.begin() as session:
        bomb_row = session.get(Item, bomb)
        assert bomb_row is not None
        session.add(ItemInput(item_id=photo, position=1, uri=bomb_row.input_uri, sha256=None))
    second = client.get(f"/items/{photo}/image?input=2")
    assert second.headers["x-picture-problem"] == "image_too_large"
    assert client.get(f"/items/{photo}/image?input=3").status_code == 404


def test_a_locate_items_boxes_are_drawn_on_its_image_one_colour_per_expression(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, client: TestClient
) -> None:
    """Issue 26, point 5: the item page draws each expression's box over the image in its own
    colour (drawn into the picture we encode: no script, no inline style), with a legend;
    an edit moves them; a caption item's picture is untouched."""
    from jobs.review import edit
    from jobs.web.boxes import PALETTE
    from tests.integration.web.conftest import build_locate_item

    item_id = build_locate_item(session_factory, blobs, tmp_path)

    page = client.get(f"/items/{item_id}")
    assert page.status_code == 200
    assert f"/items/{item_id}/image?page=1&amp;boxes=1" in page.text
    assert '<li class="box-c0">the lid</li>' in page.text
    assert '<li class="box-c1">&lt;script&gt;window.__pwned=1;alert(1)&lt;/script&gt;&lt;img' in (
        page.text
    )

    def pixel(data: bytes, x: int, y: int) -> tuple[int, int, int]:
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (400, 200)
            return image.convert("RGB").getpixel((x, y))  # type: ignore[return-value]

    def near(got: tuple[int, int, int], want: tuple[int, int, int]) -> bool:
        return all(abs(a - b) <= 40 for a, b in zip(got, want, strict=True))  # JPEG

    drawn = client.get(f"/items/{item_id}/image?boxes=1").content
    # inside the 4-pixel lines drawn inward from the left edge of "the lid" (x = 0.1 of 399)
    # and the top edge of the second box (y = 0.1 of 199)
    assert near(pixel(drawn, 41, 100), PALETTE[0])
    assert near(pixel(drawn, 300, 21), PALETTE[1])
    assert near(pixel(drawn, 200, 190), (128, 128, 128))  # outside both: the image itself
    plain = client.get(f"/items/{item_id}/image").content
    assert near(pixel(plain, 41, 100), (128, 128, 128))

    edit(
        session_factory,
        item_id,
        '[{"expression": "the lid", "box": [0.6, 0.2, 0.9, 0.8]}]',
        "ada",
    )
    moved = client.get(f"/items/{item_id}/image?boxes=1").content
    assert near(pixel(moved, 41, 100), (128, 128, 128))
    assert near(pixel(moved, 241, 100), PALETTE[0])
    assert "box-c1" not in client.get(f"/items/{item_id}").text

    _, (caption,) = submit_captions(session_factory, blobs, tmp_path / "cap", n=1)
    assert client.get(f"/items/{caption}/image?boxes=1").content == (
        client.get(f"/items/{caption}/image").content
    )
