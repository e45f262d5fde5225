"""model.documents: rendering real multi-page PDFs made here, and every per-document error."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw
from pypdf import PdfWriter

from model.documents import is_pdf, parse_page_spec, render_pages
from model.errors import InputError

PAGE_SIZE = (612, 792)  # US Letter in points; saved at 72 dpi, one pixel is one point


def make_pdf(pages: int, *, size: tuple[int, int] = PAGE_SIZE) -> bytes:
    """A PDF of ``pages`` pages, each with its invoice number written on it."""
    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        draw.text((40, 40), f"INVOICE INV-{number:03d}", fill="black")
        draw.text((40, 70), f"TOTAL {number * 100}.00 EUR", fill="black")
        draw.rectangle((40, 100, 40 + 30 * number, 130), fill=(200, 0, 0))
        images.append(image)
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


def _encrypt(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt(user_password, owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _red_width(image: Image.Image, scale: float) -> int:
    """Width of the red bar (30 pt per page number), in points."""
    y = int(115 * scale)
    # Pillow stores RGB pages as JPEG, so colours come back close, not exact.
    reds = [x for x in range(image.width) if _is_red(image.getpixel((x, y)))]
    return round(len(reds) / scale)


def _is_red(pixel: object) -> bool:
    r, g, b = pixel  # type: ignore[misc]
    return bool(r > 150 and g < 80 and b < 80)


def test_renders_every_page_in_order_as_rgb() -> None:
    pages = render_pages(make_pdf(3), dpi=144)
    assert [p.number for p in pages] == [1, 2, 3]
    for page in pages:
        assert page.image.mode == "RGB"
        assert page.image.size == (PAGE_SIZE[0] * 2, PAGE_SIZE[1] * 2)
        assert abs(_red_width(page.image, 2.0) - 30 * page.number) <= 2


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", [1, 2, 3, 4]),
        ("first", [1]),
        ("2-3", [2, 3]),
        ("1,3-4", [1, 3, 4]),
        ("4, 2", [2, 4]),
        ("3-9", [3, 4]),
    ],
)
def test_page_selection(spec: str, expected: list[int]) -> None:
    pages = render_pages(make_pdf(4), pages=spec, dpi=36)
    assert [p.number for p in pages] == expected
    for page in pages:
        assert abs(_red_width(page.image, 0.5) - 30 * page.number) <= 4


def test_parse_page_spec() -> None:
    assert parse_page_spec("all") is None
    assert parse_page_spec(" First ") == (1,)
    assert parse_page_spec("5-7,1,6") == (1, 5, 6, 7)
    for bad in ("", "0", "3-1", "1-", "a", "1,,2", "-2", "1-200000", "1.5"):
        with pytest.raises(ValueError, match="Page selection"):
            parse_page_spec(bad)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError):
        render_pages(make_pdf(1), pages="x")
    with pytest.raises(ValueError):
        render_pages(make_pdf(1), dpi=2000)


def test_page_out_of_range() -> None:
    with pytest.raises(InputError) as info:
        render_pages(make_pdf(2), pages="5-6")
    assert info.value.code == "pdf_page_out_of_range"


def test_too_many_pages_counts_selected_pages() -> None:
    data = make_pdf(6, size=(100, 100))
    with pytest.raises(InputError) as info:
        render_pages(data, max_pages=5)
    assert info.value.code == "pdf_too_many_pages"
    assert "6 pages" in info.value.message
    assert len(render_pages(data, pages="1-5", max_pages=5)) == 5
    assert len(render_pages(data, pages="first", max_pages=1)) == 1


def test_too_large_render_is_refused_before_rendering() -> None:
    data = make_pdf(1)
    with pytest.raises(InputError) as info:
        render_pages(data, dpi=600, max_pixels=10_000_000)  # 5100x6600 = 33.7 MP
    assert info.value.code == "image_too_large"
    assert len(render_pages(data, dpi=72, max_pixels=PAGE_SIZE[0] * PAGE_SIZE[1])) == 1


def test_encrypted_pdf() -> None:
    with pytest.raises(InputError) as info:
        render_pages(_encrypt(make_pdf(2), "secret"))
    assert info.value.code == "pdf_encrypted"
    # Encrypted with an empty user password (owner restrictions only): opens like any PDF.
    assert len(render_pages(_encrypt(make_pdf(2), ""), dpi=36)) == 2


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[: len(d) // 2],
        lambda d: d[:40],
        lambda d: b"%PDF-1.4\n" + b"garbage " * 200,
        lambda d: b"this is not a pdf",
    ],
)
def test_corrupt_pdf(mutate: object) -> None:
    data = mutate(make_pdf(2))  # type: ignore[operator]
    with pytest.raises(InputError) as info:
        render_pages(data)
    assert info.value.code == "pdf_corrupt"


def _zero_pages() -> bytes:
    """A well-formed PDF whose page tree is empty: PDFium loads it, and sets no error."""
    out = io.BytesIO()
    PdfWriter().write(out)
    return out.getvalue()


def test_each_pdf_gets_its_own_code_whatever_failed_before_it() -> None:
    # PDFium's last error is per thread and only a failed load sets it: a zero-page PDF read
    # right after an encrypted one once took its pdf_encrypted.
    encrypted, corrupt = _encrypt(make_pdf(1), "secret"), b"%PDF-1.4\n" + b"garbage " * 200
    codes = []
    for data in (_zero_pages(), encrypted, _zero_pages(), corrupt, _zero_pages(), encrypted):
        with pytest.raises(InputError) as info:
            render_pages(data)
        codes.append((info.value.code, "no pages" in info.value.message))
    assert codes == [
        ("pdf_corrupt", True),
        ("pdf_encrypted", False),
        ("pdf_corrupt", True),
        ("pdf_corrupt", False),
        ("pdf_corrupt", True),
        ("pdf_encrypted", False),
    ]


def test_empty_input() -> None:
    with pytest.raises(InputError) as info:
        render_pages(b"")
    assert info.value.code == "empty_input"


def test_is_pdf() -> None:
    assert is_pdf(make_pdf(1))
    assert not is_pdf(b"\x89PNG\r\n\x1a\n")
    assert not is_pdf(b"")


def page_bomb(pages: int, side_pt: float) -> bytes:
    """A tiny PDF of ``pages`` empty square pages of ``side_pt`` points."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    for _ in range(pages):
        document.new_page(side_pt, side_pt).close()
    buf = io.BytesIO()
    document.save(buf)
    document.close()
    return buf.getvalue()


def test_page_bomb_is_refused_from_page_sizes_before_rendering(render_calls: list[int]) -> None:
    # The bomb at a small scale: each page is under the per-page limit, the sum is not.
    data = page_bomb(50, 3500)
    assert len(data) < 20_000
    with pytest.raises(InputError) as info:
        render_pages(data, dpi=144, max_pixels=50_000_000, max_document_pixels=200_000_000)
    assert info.value.code == "document_too_large"
    message = info.value.message
    assert "2450000000" in message and "200000000" in message
    assert "LLAVA_BATCH_MAX_ITEM_PIXELS" in message
    assert render_calls == []  # refused before a single page was rendered
    # The default budget refuses it too.
    with pytest.raises(InputError, match="document_too_large"):
        render_pages(data)


def test_document_budget_counts_only_selected_pages() -> None:
    data = page_bomb(10, 100)  # 100x100 pixels a page at 72 dpi
    with pytest.raises(InputError, match="document_too_large"):
        render_pages(data, dpi=72, max_document_pixels=30_000)
    assert len(render_pages(data, pages="1-3", dpi=72, max_document_pixels=30_000)) == 3


def test_pages_are_rendered_one_at_a_time_when_asked(render_calls: list[int]) -> None:
    pages = render_pages(make_pdf(3), dpi=36)
    assert render_calls == []
    assert len(pages) == 3 and [s.number for s in pages.sizes] == [1, 2, 3]
    assert pages.pixels == 3 * (PAGE_SIZE[0] // 2) * (PAGE_SIZE[1] // 2)
    iterator = iter(pages)
    first = next(iterator)
    assert (first.number, len(render_calls)) == (1, 1)
    assert pages.render(3).number == 3 and len(render_calls) == 2
    with pytest.raises(ValueError):
        pages.render(4)


@pytest.mark.parametrize(
    ("raised", "code"),
    [(RuntimeError("pdfium bug"), "pdf_corrupt"), (MemoryError(), "image_too_large")],
)
def test_any_exception_while_rendering_is_an_input_error(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, code: str
) -> None:
    import pypdfium2 as pdfium

    pages = render_pages(make_pdf(2), dpi=36)

    def broken(self: object, *args: object, **kwargs: object) -> object:
        raise raised

    monkeypatch.setattr(pdfium.PdfPage, "render", broken)
    with pytest.raises(InputError) as info:
        list(pages)
    assert info.value.code == code and "Page 1" in info.value.message


def test_any_exception_while_opening_is_pdf_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    import pypdfium2 as pdfium

    def broken(self: object) -> int:
        raise OverflowError("page count")

    monkeypatch.setattr(pdfium.PdfDocument, "__len__", broken)
    with pytest.raises(InputError) as info:
        render_pages(make_pdf(1))
    assert info.value.code == "pdf_corrupt"
