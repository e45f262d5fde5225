"""decode_image on every kind of awkward input; all fixtures are made here with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from model.errors import InputError
from model.images import decode_image


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _code(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(InputError) as info:
        decode_image(data, **kwargs)
    assert info.value.message  # one human sentence, never empty
    return info.value.code


def _png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but that carries no pixel data.

    Cheap to make at any size; if decode_image ever tried to decode it, it would fail as a
    decode error, so getting ``image_too_large`` proves the size was checked first.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_zero_bytes_is_empty_input() -> None:
    assert _code(b"") == "empty_input"


def test_corrupt_bytes_are_a_decode_error() -> None:
    assert _code(bytes(range(256)) * 4) == "image_decode_error"


def test_png_signature_with_garbage_is_a_decode_error() -> None:
    assert _code(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20) == "image_decode_error"


def test_truncated_jpeg_is_a_decode_error() -> None:
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")
    data = _encode(noisy, "JPEG", quality=90)
    assert decode_image(data).size == (64, 64)  # the intact file decodes
    assert _code(data[: len(data) // 2]) == "image_decode_error"


@pytest.mark.parametrize(
    "data",
    [
        b"name,price\nshirt,12.50\n",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"<svg width='10' height='10'></svg>",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    ],
    ids=["text-renamed-jpg", "svg-xml", "svg", "pdf", "heic"],
)
def test_formats_we_cannot_read_are_unsupported(data: bytes) -> None:
    assert _code(data) == "unsupported_format"


def test_over_max_pixels_is_refused_from_the_header() -> None:
    assert _code(_png_header_only(20_000, 20_000)) == "image_too_large"


def test_max_pixels_is_configurable() -> None:
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    assert _code(data, max_pixels=9_999) == "image_too_large"
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_limit_is_also_image_too_large() -> None:
    # Over twice Pillow's own limit: Pillow raises DecompressionBombError while opening.
    assert _code(_png_header_only(20_000, 20_000), max_pixels=10**12) == "image_too_large"
    # Between Pillow's limit and twice it: only a warning, which must not let decoding proceed.
    assert _code(_png_header_only(10_000, 10_000), max_pixels=10**12) == "image_too_large"


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_raised_as_an_error_is_image_too_large() -> None:
    # Where warnings are errors, Pillow raises inside Image.open, before our own size check.
    assert _code(_png_header_only(10_000, 10_000), max_pixels=10**12) == "image_too_large"


def test_a_real_highly_compressible_bomb_is_refused() -> None:
    bomb = _encode(Image.new("1", (10_000, 6_000)), "PNG")  # 60 Mpx, a few kB on disk
    assert len(bomb) < 100_000
    assert _code(bomb) == "image_too_large"


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = _encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (16, 8))
    r, g, b = image.getpixel((8, 4))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60  # red survives


def test_16_bit_grayscale_png_is_rescaled_not_clipped() -> None:
    source = Image.new("I;16", (4, 4), 32768)
    image = decode_image(_encode(source, "PNG"))
    assert image.mode == "RGB"
    assert all(120 <= v <= 136 for v in image.getpixel((0, 0)))  # type: ignore[union-attr]


def test_palette_png_with_transparency_composites_on_white() -> None:
    source = Image.new("P", (4, 4), 0)
    source.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    source.putpixel((1, 1), 1)
    image = decode_image(_encode(source, "PNG", transparency=0))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert image.getpixel((1, 1)) == (0, 0, 255)  # opaque blue stays


def test_rgba_and_la_composite_on_white() -> None:
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    image = decode_image(_encode(rgba, "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (255, 0, 0)
    la = decode_image(_encode(Image.new("LA", (2, 2), (0, 128)), "PNG"))
    assert la.mode == "RGB"
    assert all(125 <= v <= 130 for v in la.getpixel((0, 0)))  # type: ignore[union-attr]


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2  # type: ignore[attr-defined]
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (8, 6))
    r, _, b = image.getpixel((4, 3))  # type: ignore[misc]
    assert r > 200 and b < 50


def test_multi_page_tiff_gives_its_first_page() -> None:
    pages = [Image.new("RGB", (5, 7), (0, 255, 0)), Image.new("RGB", (9, 3), (0, 0, 255))]
    data = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    image = decode_image(data)
    assert image.size == (5, 7)
    assert image.getpixel((0, 0)) == (0, 255, 0)


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    source = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned 90 degrees; display rotated
    image = decode_image(_encode(source, "JPEG", exif=exif.tobytes()))
    assert image.size == (20, 40)


@pytest.mark.parametrize("size", [(1, 1), (10_000, 8), (8, 10_000), (33, 17)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_ordinary_formats_and_extreme_shapes(size: tuple[int, int], fmt: str) -> None:
    if fmt == "WEBP" and max(size) > 16383:
        pytest.fail("WebP cannot hold this size; fix the test matrix")
    image = decode_image(_encode(Image.new("RGB", size, (10, 200, 30)), fmt))
    assert (image.mode, image.size) == ("RGB", size)


def test_grayscale_and_bilevel_become_rgb() -> None:
    for mode in ("L", "1"):
        image = decode_image(_encode(Image.new(mode, (3, 3), 255), "PNG"))
        assert image.mode == "RGB"
        assert image.getpixel((1, 1)) == (255, 255, 255)


# Escapes found by hand and by fuzzing: Pillow raised something other than the errors it
# documents, and the exception left decode_image (stalling a worker's batch, killing a run).


def test_gif_cut_at_a_frame_separator_is_a_decode_error() -> None:
    # A valid GIF whose trailer ";" became "," (a next frame with no descriptor): Pillow raises
    # struct.error while counting frames.
    data = _encode(Image.new("P", (8, 8), 1), "GIF")
    assert data.endswith(b";") and len(data) < 100
    assert _code(data[:-1] + b",") == "image_decode_error"


def _dds_header(fourcc: bytes) -> bytes:
    """A DDS file header (128 bytes) with a compressed pixel format named by ``fourcc``."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I", 32, 0x4) + fourcc + b"\0" * 20  # DDPF_FOURCC
    return b"DDS " + header + pixel_format + struct.pack("<5I", 0x1000, 0, 0, 0, 0)


def test_dds_with_a_pixel_format_pillow_lacks_is_unsupported() -> None:
    # DDS bytes saved under a .png name: Pillow identifies DDS, then raises NotImplementedError.
    assert _code(_dds_header(b"ZZZZ") + b"\0" * 64) == "unsupported_format"


def test_unexpected_exceptions_from_pillow_become_decode_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever a plugin raises next (here a RuntimeError from load()), it stays inside.
    data = _encode(Image.new("RGB", (4, 4)), "PNG")

    def broken_load(self: Image.Image) -> None:
        raise RuntimeError("plugin bug")

    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", broken_load)
    assert _code(data) == "image_decode_error"


def test_memory_error_while_decoding_is_reported_as_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _encode(Image.new("RGB", (4, 4)), "PNG")

    def no_memory(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", no_memory)
    with pytest.raises(InputError) as info:
        decode_image(data)
    assert info.value.code == "image_too_large"
    assert "memory" in info.value.message


def test_read_image_size_reads_the_header_only() -> None:
    from model.images import read_image_size

    assert read_image_size(_encode(Image.new("RGB", (33, 17)), "PNG")) == (33, 17)
    # Pixel data missing entirely: the header is all it needs.
    assert read_image_size(_png_header_only(3000, 2000)) == (3000, 2000)
    for data, code in [
        (b"", "empty_input"),
        (b"plain text, not a picture", "unsupported_format"),
        (bytes(range(256)), "image_decode_error"),
        (_png_header_only(20_000, 20_000), "image_too_large"),
        (_dds_header(b"ZZZZ"), "unsupported_format"),
    ]:
        with pytest.raises(InputError) as info:
            read_image_size(data)
        assert info.value.code == code
