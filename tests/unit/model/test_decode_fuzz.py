"""Seeded fuzzing of the decode path: mutated real images and PDFs give a documented code or an
image, never another exception.

Sources are made here (Pillow images in six formats, real PDFs from ``tests.helpers``); each is
mutated with bit flips, byte overwrites, truncation, splices and header swaps from a fixed seed,
so a failure names a case that reproduces. Each group runs its cases until a small time budget
is spent (the suite runs on every CI run, on two cores), and must get through a minimum number.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from jobs.errors import ItemErrorCode
from model.documents import render_pages
from model.errors import INPUT_ERROR_CODES, InputError
from model.images import decode_image
from tests.helpers import write_pdf

SEED = 20_240_909
TIME_BUDGET_S = 1.5
MIN_CASES = 60


def _picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", size, (200, 180, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, size[0] // 2, size[1] // 2), fill=(10, 60, 220))
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=(0, 0, 0), width=2)
    return image.convert(mode)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _image_sources() -> dict[str, bytes]:
    frames = [_picture((24, 16), "P"), _picture((24, 16)).rotate(180).convert("P")]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": _encode(_picture((40, 30), "RGBA"), "PNG"),
        "png-palette": _encode(_picture((20, 20), "P"), "PNG", transparency=0),
        "jpeg": _encode(_picture((48, 32)), "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg-progressive": _encode(_picture((40, 40)), "JPEG", progressive=True),
        "gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40),
        "webp": _encode(_picture((32, 24)), "WEBP", quality=70),
        "bmp": _encode(_picture((20, 12)), "BMP"),
        "tiff": _encode(
            _picture((16, 16)), "TIFF", save_all=True, append_images=[_picture((8, 8), "L")]
        ),
        "tiff-lzw": _encode(_picture((24, 16), "CMYK"), "TIFF", compression="tiff_lzw"),
    }


HEADERS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"%PDF-1.7\n",
    b"DDS |\x00\x00\x00",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
]


def mutate(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """One to three mutations of ``data``: flips, overwrites, truncation, splices, headers."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        at = rng.randrange(max(len(out), 1))
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # overwrite a run with interesting bytes
            fill = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80", bytes([rng.randrange(256)])])
            out[at : at + rng.randint(1, 16)] = fill * rng.randint(1, 16)
        elif kind == 2:  # truncate
            del out[rng.randint(1, max(len(out) - 1, 1)) :]
        elif kind == 3:  # splice a piece of another file in
            donor = rng.choice(donors)
            start = rng.randrange(len(donor))
            out[at:at] = donor[start : start + rng.randint(1, 256)]
        elif kind == 4:  # duplicate or drop a region
            end = min(len(out), at + rng.randint(1, 128))
            if rng.random() < 0.5:
                out[at:at] = out[at:end]
            else:
                del out[at:end]
        else:  # swap the header for another format's
            header = rng.choice(HEADERS)
            out[: len(header)] = header
        if not out:
            break
    return bytes(out)


def _cases(sources: dict[str, bytes], seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    names = sorted(sources)
    donors = [sources[name] for name in names]
    for index in range(100_000):
        name = names[index % len(names)]
        yield f"{name}#{index}", mutate(sources[name], rng, donors)


def _fuzz(sources: dict[str, bytes], seed: int, check: Callable[[bytes], None]) -> int:
    """Runs seeded cases until the time budget is spent; returns how many ran."""
    deadline = time.monotonic() + TIME_BUDGET_S
    count = 0
    for label, data in _cases(sources, seed):
        try:
            check(data)
        except InputError as exc:
            assert exc.code in INPUT_ERROR_CODES, (label, exc.code, data[:64])
            assert exc.message and "\n" not in exc.message, (label, exc.message)
        except Exception as exc:  # the point of the test: nothing else may escape
            pytest.fail(f"case {label} (seed {seed}) escaped with {exc!r}; bytes {data[:64]!r}")
        count += 1
        if time.monotonic() > deadline:
            break
    return count


def _check_image(data: bytes) -> None:
    image = decode_image(data, max_pixels=2_000_000, min_side=16)
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@pytest.mark.filterwarnings("ignore")
def test_mutated_images_give_documented_codes_or_an_image() -> None:
    count = _fuzz(_image_sources(), SEED, _check_image)
    assert count >= MIN_CASES


@pytest.fixture(scope="module")
def pdf_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    import pypdfium2 as pdfium

    directory = tmp_path_factory.mktemp("fuzz-pdfs")
    vector = pdfium.PdfDocument.new()
    for side in (200, 300):
        vector.new_page(side, side * 1.4).close()
    buffer = io.BytesIO()
    vector.save(buffer)
    vector.close()
    return {
        "pillow-2-pages": write_pdf(directory / "two.pdf", 2).read_bytes(),
        "pdfium-empty-pages": buffer.getvalue(),
    }


def _check_pdf(data: bytes) -> None:
    pages = render_pages(
        data, dpi=36, max_pages=4, max_pixels=2_000_000, max_document_pixels=4_000_000
    )
    for page in pages:
        assert page.image.mode == "RGB" and page.image.width > 0


@pytest.mark.filterwarnings("ignore")
def test_mutated_pdfs_give_documented_codes_or_pages(pdf_sources: dict[str, bytes]) -> None:
    count = _fuzz(pdf_sources, SEED + 1, _check_pdf)
    assert count >= MIN_CASES


def test_documented_codes_are_item_error_codes_in_the_docs() -> None:
    assert set(ItemErrorCode) >= INPUT_ERROR_CODES
    page = (Path(__file__).resolve().parents[3] / "docs" / "errors.md").read_text()
    table = page[page.index("\n## Item error codes\n") :]
    missing = [code for code in sorted(INPUT_ERROR_CODES) if f"| `{code}` |" not in table]
    assert not missing, f"codes missing from the error table of docs/errors.md: {missing}"


def test_the_fuzzer_is_seeded() -> None:
    sources = {"a": bytes(range(200)), "b": b"%PDF-1.4\n" + bytes(100)}
    first = [data for _, data in zip(range(20), _cases(sources, 7), strict=False)]
    again = [data for _, data in zip(range(20), _cases(sources, 7), strict=False)]
    assert first == again and len(set(first)) > 10
