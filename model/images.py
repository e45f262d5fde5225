"""Decode untrusted image bytes into an upright RGB picture, or fail that one item cleanly.

Pillow only (no torch): ``jobs`` and the workers validate inputs with this before anything
reaches the model. Every failure is an ``InputError`` with a stable code, because bad input must
fail one item, never the batch or the worker.
"""

from __future__ import annotations

import io
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

from model.errors import InputError

__all__ = ["DEFAULT_MAX_PIXELS", "SOURCE_SIZE", "decode_image", "read_image_size"]

DEFAULT_MAX_PIXELS = 50_000_000
# ``Image.info`` key of a decoded image: its full width and height, upright, before any reduced
# scale (``min_side``); a box found on the decoded image maps back to these pixels.
SOURCE_SIZE = "llava_batch_source_size"
# EXIF orientations that turn an image a quarter: width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)

# Containers that are images but that Pillow cannot read without extra plugins (HEIC/HEIF needs
# pillow-heif): reported as unsupported rather than corrupt. Brands sit at bytes 8..12 of `ftyp`.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Return ``data`` decoded as an RGB image, upright per its EXIF orientation.

    Raises ``InputError`` with code ``empty_input`` (zero bytes), ``image_too_large`` (more than
    ``max_pixels`` pixels, or than Pillow's ``Image.MAX_IMAGE_PIXELS`` bomb limit, judged from
    the header before any pixel is decoded; or decoding ran out of memory), ``unsupported_format``
    (recognisably not an image Pillow can read: text, SVG, PDF, HEIC, or a variant Pillow does
    not implement) or ``image_decode_error`` (corrupt or truncated: any other exception from
    Pillow). Nothing else escapes but ``BaseException``s that are not ``Exception``s.
    Animated and multi-page images yield their first frame; alpha is composited on white.

    ``min_side``: the smallest width and height the model needs. A JPEG much larger than that is
    decoded at a reduced scale (DCT scaling, 1/2 to 1/8), never below ``min_side``: the model
    resizes it down anyway, and full-size decoding is most of a worker's CPU time per photo.
    """
    if not data:
        raise InputError("empty_input", "The input is empty (zero bytes).")
    try:
        image = _open_first_frame(data, max_pixels)
        source = _upright_size(image)
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
        # load() inside the try: truncation and most corruption only surface when the pixels
        # are actually decoded.
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
        rgb.info[SOURCE_SIZE] = source
        return rgb
    except InputError:
        raise
    except Exception as exc:
        raise _as_input_error(exc) from exc


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    turned = image.getexif().get(0x0112) in _QUARTER_TURNS
    return (height, width) if turned else (width, height)


def read_image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height of the image in ``data``, from its header alone (no pixel is decoded).

    Lets a caller budget memory before paying for ``decode_image``. Raises what ``decode_image``
    raises for the header: ``empty_input``, ``unsupported_format``, ``image_decode_error`` or
    ``image_too_large`` (over ``max_pixels``); corruption further in surfaces only on decoding.
    """
    if not data:
        raise InputError("empty_input", "The input is empty (zero bytes).")
    try:
        with _open_checked(data, max_pixels) as image:
            width, height = image.size
            return width, height
    except InputError:
        raise
    except Exception as exc:
        raise _as_input_error(exc) from exc


def _as_input_error(exc: Exception) -> InputError:
    """What any exception while opening or decoding an image means for that item."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        # The warning arrives as an exception only where warnings are errors (e.g. pytest -W).
        return _too_large(_one_line(exc))
    if isinstance(exc, MemoryError):
        # The header was within the pixel limit, so the file asks for more than its size says
        # (a lying header, huge metadata or tiles): refused as too large, not called corrupt.
        return _too_large("decoding it needs more memory than the worker can give it")
    if isinstance(exc, NotImplementedError):
        # A recognised format using a variant Pillow does not implement (e.g. a DDS pixel format).
        return InputError(
            "unsupported_format",
            f"The image uses a format variant that cannot be read: {_one_line(exc)}.",
        )
    # Pillow's plugins raise far more than their documented errors on hostile bytes
    # (struct.error, SyntaxError, IndexError, RuntimeError...): anything else is corrupt.
    return InputError("image_decode_error", f"The image could not be decoded: {_one_line(exc)}.")


def _open_first_frame(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only), refuse oversize images, and seek to the first frame."""
    image = _open_checked(data, max_pixels)
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    return image


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse oversize images."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if _looks_unsupported(data):
            raise InputError(
                "unsupported_format",
                "The input is not in an image format that can be read "
                "(supported: JPEG, PNG, GIF, WebP, BMP, TIFF and other Pillow formats).",
            ) from exc
        raise InputError(
            "image_decode_error", "The input is not a readable image (unrecognised data)."
        ) from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InputError("image_decode_error", f"The image has invalid size {width}x{height}.")
    # Pillow only *warns* about a possible bomb between its limit and twice it, and would then
    # decode it. Apply its limit here as a hard one too, rather than turning the warning into an
    # error with warnings.catch_warnings, which is process-wide and races between threads.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        raise _too_large(f"{width}x{height} is {width * height} pixels, over {limit}")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, keeping what a viewer would show."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        # A plain convert("RGB") clips high-bit-depth values at 255 (mostly white): rescale
        # into 8 bits first. Values above 255 mean 16-bit data; floats in 0..1 a unit range.
        wide = image if mode == "F" else image.convert("I")
        high = float(cast("tuple[float, float]", wide.getextrema())[1])
        scale = 255.0 / 65535.0 if high > 255 else (255.0 if mode == "F" and high <= 1.0 else 1.0)
        return wide.point(lambda v: v * scale).convert("L").convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:  # e.g. LAB, which Pillow cannot convert to RGB directly
        raise InputError(
            "unsupported_format", f"The image colour mode {mode} is not supported."
        ) from exc


def _looks_unsupported(data: bytes) -> bool:
    """Tell "a format we do not read" from "corrupt bytes", for a clearer error code."""
    head = data[:512]
    if head.startswith(b"%PDF"):
        return True
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return True
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<?xml", b"<svg", b"<!doctype", b"<html")):
        return True
    # Text (a renamed .txt/.csv/.json): valid UTF-8 with no control characters but whitespace.
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character may be cut at byte 512: judge the part before it.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _too_large(detail: str) -> InputError:
    return InputError("image_too_large", f"The image is too large to process ({detail}).")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
