"""Rasterise PDF pages into RGB images for the model, or fail that one item cleanly.

pypdfium2 and Pillow only (no torch): ``jobs`` may validate page specs with this at submit.
Every failure on a document is an ``InputError`` with a stable code, so a bad PDF fails its own
item, never the batch or the worker. Budgets (pages, pixels per page, pixels per document) are
checked from page sizes before anything is rendered, and pages are rendered one at a time, when
asked for: a document never costs more memory than the page in hand.

PDFium is not thread-safe: every call into it, from opening a document to closing it, holds
``PDFIUM_LOCK``, one lock for the whole process. So only one thread renders at a time in a
process; render in more processes (workers) for more throughput.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from model.errors import InputError

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_DOCUMENT_PIXELS",
    "DEFAULT_MAX_PAGES",
    "MAX_DPI",
    "MIN_DPI",
    "PDFIUM_LOCK",
    "DocumentPages",
    "PageImage",
    "PageSize",
    "is_pdf",
    "parse_page_spec",
    "render_pages",
]

DEFAULT_DPI = 144
DEFAULT_MAX_PAGES = 50
# Total pixels of the selected pages of one document: 50 A4 pages at 144 dpi are ~100 MP.
DEFAULT_MAX_DOCUMENT_PIXELS = 200_000_000
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
    max_document_pixels: int = DEFAULT_MAX_DOCUMENT_PIXELS,
) -> DocumentPages:
    """Check the selected pages of the PDF in ``data`` against every budget; render them lazily.

    Nothing is rendered here: the document is opened, the selection resolved and every selected
    page's size read (``page.get_size()``), then closed. The returned ``DocumentPages`` renders
    one page per ``render(number)`` call or iteration step, in page order, so a caller holds only
    the pages it is using. Selected pages past the end of the document are skipped ("1-3" of a
    2-page document gives pages 1 and 2). ``max_pages`` limits the pages *rendered* (after
    selection and skipping), not the document's length: "first" of a 1000-page document is fine.

    Raises ``ValueError`` for a bad ``pages`` spec or ``dpi`` (refuse those at submit), and
    ``InputError`` with code ``empty_input``, ``pdf_encrypted`` (needs a password),
    ``pdf_corrupt`` (not parseable, no pages, a page without area; any exception from PDFium),
    ``pdf_page_out_of_range`` (none of the selected pages exists), ``pdf_too_many_pages``
    (more than ``max_pages`` selected), ``image_too_large`` (a page would render to more than
    ``max_pixels`` pixels) or ``document_too_large`` (the selected pages together would render to
    more than ``max_document_pixels`` pixels, the per-item budget). Sizes are judged before any
    page is rendered. Rendering a page raises only ``InputError`` too (see ``DocumentPages``).
    """
    selection = parse_page_spec(pages)
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise ValueError(f"dpi must be between {MIN_DPI} and {MAX_DPI}, not {dpi}.")
    if not data:
        raise InputError("empty_input", "The input is empty (zero bytes).")
    if not is_pdf(data):
        raise InputError("pdf_corrupt", "The input is not a PDF (no %PDF- header).")
    scale = dpi / 72
    with PDFIUM_LOCK, _contained("The PDF cannot be read", "document_too_large"):
        document = _open(data)
        try:
            numbers = _select(len(document), selection, pages, max_pages)
            sizes = tuple(_measure(document, n, scale, max_pixels) for n in numbers)
        finally:
            document.close()
    total = sum(size.pixels for size in sizes)
    if total > max_document_pixels:
        raise InputError(
            "document_too_large",
            f"The {len(sizes)} selected page(s) would render to {total} pixels at {dpi} dpi, "
            f"over the limit of {max_document_pixels} pixels per document "
            "(LLAVA_BATCH_MAX_ITEM_PIXELS); select fewer pages or use a lower dpi.",
        )
    return DocumentPages(data, sizes, scale)


@dataclass(frozen=True)
class PageSize:
    """The size in pixels that page ``number`` (1-based) renders to at the chosen dpi."""

    number: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


class DocumentPages:
    """The checked, selected pages of one PDF; each page is rendered only when asked for.

    ``sizes`` (in page order) and ``pixels`` (their total) are known without rendering.
    ``render(number)`` reopens the document, renders that one page and closes it again, so no
    PDFium state outlives a call and any thread may render any page (one at a time, under
    ``PDFIUM_LOCK``). Iterating renders the pages in order, one per step. Rendering raises only
    ``InputError``: ``pdf_corrupt`` (PDFium failed on the page), ``image_too_large`` (it ran out
    of memory).
    """

    def __init__(self, data: bytes, sizes: tuple[PageSize, ...], scale: float) -> None:
        self._data = data
        self._scale = scale
        self.sizes = sizes
        self.pixels = sum(size.pixels for size in sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[PageImage]:
        for size in self.sizes:
            yield self.render(size.number)

    def render(self, number: int) -> PageImage:
        """Render page ``number`` (one of ``sizes``) as RGB."""
        if number not in {size.number for size in self.sizes}:
            raise ValueError(f"Page {number} is not one of the selected pages.")
        with PDFIUM_LOCK, _contained(f"Page {number} of the PDF cannot be rendered"):
            document = _open(self._data)
            try:
                page = document[number - 1]
                try:
                    bitmap = page.render(scale=self._scale)
                    try:
                        image = bitmap.to_pil()
                        # The image must outlive PDFium's bitmap buffer: copy it unless to_pil()
                        # already did (a read-only image is a view of the buffer).
                        if image.mode != "RGB" or image.readonly:
                            image = image.convert("RGB")
                    finally:
                        bitmap.close()
                finally:
                    page.close()
            finally:
                document.close()
        return PageImage(number=number, image=image)


@contextmanager
def _contained(what: str, memory_code: str = "image_too_large") -> Iterator[None]:
    """Turn whatever PDFium or Pillow raises into an ``InputError`` naming ``what`` failed.

    MemoryError is not "corrupt": every size was checked first, so the document asks for more
    than its page sizes say; it is reported under ``memory_code`` as too large instead.
    """
    try:
        yield
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(
            memory_code, f"{what}: it needs more memory than the worker can give it."
        ) from exc
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        raise InputError(
            "pdf_corrupt", f"{what}: {detail[0] if detail else type(exc).__name__}."
        ) from exc


def _open(data: bytes) -> pdfium.PdfDocument:
    """The document in ``data``, which the caller keeps alive until it closes the document
    (PDFium reads the buffer in place).

    Loaded through PDFium's own call rather than ``pdfium.PdfDocument(data)``: that also refuses
    a document that loads but has no pages, and then reads PDFium's last error, which only a
    failed load sets, so a zero-page PDF took the code of whatever PDF failed before it in this
    thread (``pdf_encrypted`` after an encrypted one). Here the last error is read only when the
    load itself failed, and a document without pages is judged by ``_select``."""
    raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code in (_ERR_PASSWORD, _ERR_SECURITY):
            raise InputError("pdf_encrypted", "The PDF is password-protected and cannot be opened.")
        reason = _LOAD_ERRORS.get(code, f"PDFium error {code}")
        raise InputError("pdf_corrupt", f"The PDF cannot be read ({reason}).")
    return pdfium.PdfDocument(raw)


# PDFium's FPDF_ERR_* codes that a failed load can leave (password and security are above).
_LOAD_ERRORS = {1: "unknown error", 2: "file error", 3: "not a PDF or corrupt", 6: "page error"}


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


def _measure(document: pdfium.PdfDocument, number: int, scale: float, max_pixels: int) -> PageSize:
    try:
        page = document[number - 1]
    except pdfium.PdfiumError as exc:
        raise InputError("pdf_corrupt", f"Page {number} of the PDF cannot be read: {exc}") from exc
    try:
        width_pt, height_pt = page.get_size()  # points, after the page's own rotation
    finally:
        page.close()
    if not (math.isfinite(width_pt) and math.isfinite(height_pt)):
        raise InputError("pdf_corrupt", f"Page {number} of the PDF has an invalid size.")
    width, height = math.ceil(width_pt * scale), math.ceil(height_pt * scale)
    if width < 1 or height < 1:
        raise InputError("pdf_corrupt", f"Page {number} of the PDF has no area.")
    if width * height > max_pixels:
        raise InputError(
            "image_too_large",
            f"Page {number} would render to {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}; use a lower dpi.",
        )
    return PageSize(number, width, height)
