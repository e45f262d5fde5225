"""An item's input as the review page shows it: a thumbnail, or the full picture, always
re-encoded by us as a JPEG (never the input's own bytes, so never a type the browser would run:
an SVG or an HTML file submitted as an "image" is only ever decoded by Pillow, and refused).

Decoding uses the worker's own bounded decoders (``model.images``, ``model.documents``) under the
deployment's budgets (``LLAVA_BATCH_MAX_INPUT_BYTES``, ``_MAX_IMAGE_PIXELS``, ``_MAX_ITEM_PIXELS``):
a decompression bomb is refused from its header, and of a PDF only the one page shown is rendered,
at a low dpi for a thumbnail, so a 60-page PDF costs one small page. An input that cannot be shown
gets a placeholder (with its reason in a header), never an error page. Thumbnails are cached on
disk, keyed by the input's sha256 (the same input in many jobs is rendered once) and the page.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from jobs.web.boxes import Box, draw_boxes
from model.documents import MIN_DPI, is_pdf, render_pages
from model.errors import InputError

THUMB_SIDE = 256
FULL_SIDE = 2048
FULL_DPI = 96  # a PDF page shown whole: screen resolution, well under the worker's default
# Renders at once: a page of 100 thumbnails, first seen, is rendered two at a time, not 100
# decodes in memory together.
RENDERS = threading.BoundedSemaphore(2)


@dataclass(frozen=True)
class Budgets:
    """The worker's decode limits (``Settings``): the same for what the page renders."""

    max_input_bytes: int
    max_image_pixels: int
    max_item_pixels: int


@dataclass(frozen=True)
class Picture:
    """JPEG bytes to send; ``problem``: why a placeholder stands in for the input (a code)."""

    data: bytes
    problem: str | None = None


def render(
    data: bytes, *, page: int, side: int, budgets: Budgets, boxes: Sequence[Box] = ()
) -> bytes:
    """``data`` (an image, or page ``page`` of a PDF) as a JPEG at most ``side`` pixels on its
    longer side, ``boxes`` drawn on it. Raises ``InputError`` (the worker's codes) for what
    cannot be shown."""
    if is_pdf(data):
        dpi = MIN_DPI if side <= THUMB_SIDE else FULL_DPI
        document = render_pages(
            data,
            pages=str(page),
            dpi=dpi,
            max_pages=1,
            max_pixels=budgets.max_image_pixels,
            max_document_pixels=budgets.max_item_pixels,
        )
        if not len(document):
            raise InputError("pdf_page_out_of_range", f"The PDF has no page {page}.")
        image = document.render(page).image
    else:
        from model.images import decode_image

        if page != 1:
            raise InputError("pdf_page_out_of_range", "An image has one page.")
        image = decode_image(data, max_pixels=budgets.max_image_pixels, min_side=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    draw_boxes(image.convert("RGB"), boxes).save(out, format="JPEG", quality=85)
    return out.getvalue()


def placeholder(side: int = THUMB_SIDE) -> bytes:
    """A grey square with a cross: what stands in for an input that cannot be shown."""
    image = Image.new("RGB", (side, side), (224, 224, 224))
    draw = ImageDraw.Draw(image)
    draw.line((0, 0, side, side), fill=(160, 160, 160), width=3)
    draw.line((0, side, side, 0), fill=(160, 160, 160), width=3)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=70)
    return out.getvalue()


class ThumbnailCache:
    """Rendered thumbnails on disk: ``<dir>/<key[:2]>/<key>-p<page>.jpg``; a placeholder is
    cached as ``….bad`` holding its code, so a hostile input is judged once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str, page: int, suffix: str) -> Path:
        return self.directory / key[:2] / f"{key}-p{page}{suffix}"

    def get(self, key: str, page: int) -> Picture | None:
        try:
            return Picture(self._path(key, page, ".jpg").read_bytes())
        except FileNotFoundError:
            pass
        try:
            code = self._path(key, page, ".bad").read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        return Picture(placeholder(), code or "image_decode_error")

    def put(self, key: str, page: int, picture: Picture) -> None:
        if picture.problem is None:
            _write_atomically(self._path(key, page, ".jpg"), picture.data)
        else:
            _write_atomically(self._path(key, page, ".bad"), picture.problem.encode("ascii"))


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the whole file or none (two servers may render the same thumbnail)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def picture_of(
    data: bytes, *, page: int, side: int, budgets: Budgets, boxes: Sequence[Box] = ()
) -> Picture:
    """``render``, with a placeholder and its code for an input that cannot be shown."""
    if len(data) > budgets.max_input_bytes:
        return Picture(placeholder(min(side, THUMB_SIDE)), "input_too_large")
    with RENDERS:
        try:
            return Picture(render(data, page=page, side=side, budgets=budgets, boxes=boxes))
        except InputError as exc:
            return Picture(placeholder(min(side, THUMB_SIDE)), exc.code)
