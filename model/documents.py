"""Rasterise PDF pages into RGB images for the model, or fail that one item cleanly.

pypdfium2 and Pillow only (no torch): ``jobs`` may validate page specs with this at submit.
Every failure on a document is an ``InputError`` with a stable code, so a bad PDF fails its own
item, never the batch or the worker.

PDFium is not thread-safe: every call into it, from opening a document to closing it, holds
``PDFIUM_LOCK``, one lock for the whole process. So only one thread renders at a time in a
process; render in more processes (workers) for more throughput.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pypdfium2 as pdfium
from PIL import Image

from model.errors import InputError

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PAGES",
    "MAX_DPI",
    "MIN_DPI",
    "PDFIUM_LOCK",
    "PageImage",
    "is_pdf",
    "parse_page_spec",
    "render_pages",
]

DEFAULT_DPI = 144
DEFAULT_MAX_PAGES = 50
MIN_DPI = 36
MAX_DPI = 600
# Longest range a page spec may name: "1-1000000" would otherwise build a huge list.
_MAX_SPEC_PAGE = 100_000
# PDFium's FPDF_ERR_PASSWORD and FPDF_ERR_SECURITY (an unsupported security handler).
_ERR_PASSWORD = 4
_ERR_SECURITY = 5

PDFIUM_LOCK = threading.Lock()


@dataclass(frozen=True)
class PageImage:
    """One rendered page: ``number`` is 1-based, ``image`` is RGB."""

    number: int
    image: Image.Image


def is_pdf(data: bytes) -> bool:
    """Whether ``data`` looks like a PDF: ``%PDF-`` in its first 1024 bytes, as readers allow."""
    return b"%PDF-" in data[:1024]


def parse_page_spec(spec: str) -> tuple[int, ...] | None:
    """Parse which pages to render: ``None`` for "all", else sorted distinct 1-based numbers.

    Accepts "all", "first" (page 1) or a list of pages and ranges such as "1-3" or
    "1,3,5-7" (spaces ignored). Raises ``ValueError`` with one sentence on anything else.
    """
    text = spec.strip().lower().replace(" ", "")
    if text == "all":
        return None
    if text == "first":
        return (1,)
    pages: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(
                f'Page selection {spec!r} is not valid: use "all", "first", or pages and '
                'ranges like "1-3" or "1,3,5-7".'
            )
        start, end = int(low), int(high) if sep else int(low)
        if start < 1 or end < start or end > _MAX_SPEC_PAGE:
            raise ValueError(
                f"Page selection {spec!r} is not valid: {part!r} must be a page or an "
                f"increasing range between 1 and {_MAX_SPEC_PAGE}."
            )
        pages.update(range(start, end + 1))
    return tuple(sorted(pages))


def render_pages(
    data: bytes,
    *,
    pages: str = "all",
    dpi: int = DEFAULT_DPI,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_pixels: int = 50_000_000,
) -> list[PageImage]:
    """Render the selected pages of the PDF in ``data`` at ``dpi``, in page order.

    Selected pages past the end of the document are skipped ("1-3" of a 2-page document gives
    pages 1 and 2). ``max_pages`` limits the pages *rendered* (after selection and skipping),
    not the document's length: "first" of a 1000-page document is fine.

    Raises ``ValueError`` for a bad ``pages`` spec or ``dpi`` (refuse those at submit), and
    ``InputError`` with code ``empty_input``, ``pdf_encrypted`` (needs a password),
    ``pdf_corrupt`` (not parseable, no pages, or a page that fails to load or render),
    ``pdf_page_out_of_range`` (none of the selected pages exists), ``pdf_too_many_pages``
    (more than ``max_pages`` selected), or ``image_too_large`` (a page would render to more
    than ``max_pixels`` pixels, judged from its size before rendering).
    """
    selection = parse_page_spec(pages)
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise ValueError(f"dpi must be between {MIN_DPI} and {MAX_DPI}, not {dpi}.")
    if not data:
        raise InputError("empty_input", "The input is empty (zero bytes).")
    if not is_pdf(data):
        raise InputError("pdf_corrupt", "The input is not a PDF (no %PDF- header).")
    with PDFIUM_LOCK:
        document = _open(data)
        try:
            numbers = _select(len(document), selection, pages, max_pages)
            return [_render(document, n, dpi / 72, max_pixels) for n in numbers]
        finally:
            document.close()


def _open(data: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code in (_ERR_PASSWORD, _ERR_SECURITY):
            raise InputError(
                "pdf_encrypted", "The PDF is password-protected and cannot be opened."
            ) from exc
        raise InputError("pdf_corrupt", f"The PDF cannot be read: {exc}") from exc


def _select(count: int, selection: tuple[int, ...] | None, spec: str, max_pages: int) -> list[int]:
    if count < 1:
        raise InputError("pdf_corrupt", "The PDF has no pages.")
    numbers = (
        list(range(1, count + 1)) if selection is None else [n for n in selection if n <= count]
    )
    if not numbers:
        raise InputError(
            "pdf_page_out_of_range",
            f"None of the selected pages ({spec}) exists: the PDF has {count} page(s).",
        )
    if len(numbers) > max_pages:
        raise InputError(
            "pdf_too_many_pages",
            f"{len(numbers)} pages are selected, over the limit of {max_pages} per document.",
        )
    return numbers


def _render(document: pdfium.PdfDocument, number: int, scale: float, max_pixels: int) -> PageImage:
    try:
        page = document[number - 1]
    except pdfium.PdfiumError as exc:
        raise InputError("pdf_corrupt", f"Page {number} of the PDF cannot be read: {exc}") from exc
    try:
        width_pt, height_pt = page.get_size()  # points, after the page's own rotation
        width, height = math.ceil(width_pt * scale), math.ceil(height_pt * scale)
        if width < 1 or height < 1:
            raise InputError("pdf_corrupt", f"Page {number} of the PDF has no area.")
        if width * height > max_pixels:
            raise InputError(
                "image_too_large",
                f"Page {number} would render to {width}x{height} = {width * height} pixels, "
                f"over the limit of {max_pixels}; use a lower dpi.",
            )
        try:
            bitmap = page.render(scale=scale)
        except (pdfium.PdfiumError, MemoryError) as exc:
            raise InputError(
                "pdf_corrupt", f"Page {number} of the PDF cannot be rendered: {exc}"
            ) from exc
        try:
            # convert() copies, so the image outlives PDFium's bitmap buffer.
            image = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
        return PageImage(number=number, image=image)
    finally:
        page.close()
