"""Catalogue-sized product photos for the benchmarks, made deterministically with Pillow alone.

Each image is 800 to 1600 px on its long side with one of several aspect ratios, and looks (to a
JPEG encoder) like a product shot: a soft two-colour studio gradient, a shaded product made of a
few shapes with a blurred shadow, a highlight, and mild sensor noise, saved at quality 90. So
decode cost and file size are those of real photos (roughly 100 to 300 KB each), not of noise
(which compresses badly and decodes slower) nor of flat colour (which decodes faster).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

__all__ = ["ASPECTS", "LONG_SIDES", "make_catalogue", "make_image"]

# (width, height) ratios seen in catalogues: square, landscape and portrait shots.
ASPECTS: tuple[tuple[int, int], ...] = (
    (1, 1),
    (4, 3),
    (3, 4),
    (3, 2),
    (2, 3),
    (4, 5),
    (16, 9),
    (5, 4),
)
LONG_SIDES = (800, 1600)
QUALITY = 90
NOISE_SIGMA = 5.0
# Uniform 0..255 has a standard deviation of about 73.9: scale it to NOISE_SIGMA around 128.
_NOISE_LUT = [round(128 + (v - 127.5) * NOISE_SIGMA / 73.9) for v in range(256)] * 3


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _size(rng: random.Random) -> tuple[int, int]:
    long_side = rng.randint(*LONG_SIDES)
    a, b = rng.choice(ASPECTS)
    if a >= b:
        return long_side, max(1, round(long_side * b / a))
    return max(1, round(long_side * a / b)), long_side


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L").rotate(
        rng.uniform(-40, 40), resample=Image.Resampling.BICUBIC
    )
    ramp = ImageOps.autocontrast(ramp.crop((64, 64, 192, 192))).resize(
        size, Image.Resampling.BILINEAR
    )
    return ImageOps.colorize(ramp, _colour(rng, 150, 235), _colour(rng, 200, 255))


def _product(rng: random.Random, image: Image.Image) -> None:
    w, h = image.size
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.45, 0.6)
    pw, ph = w * rng.uniform(0.25, 0.5), h * rng.uniform(0.3, 0.55)
    box = (cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2)
    # A soft shadow under the product.
    shadow = Image.new("L", image.size, 0)
    ImageDraw.Draw(shadow).ellipse(
        (box[0], box[3] - ph * 0.08, box[2] + pw * 0.1, box[3] + ph * 0.1), fill=110
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(4, w // 80)))
    image.paste((40, 40, 40), mask=shadow)
    # The body, shaded with a radial gradient so it is not one flat colour.
    body = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(body)
    kind = rng.randrange(3)
    if kind == 0:
        draw.rounded_rectangle(box, radius=min(pw, ph) * 0.15, fill=255)
    elif kind == 1:
        draw.ellipse(box, fill=255)
    else:
        neck = pw * 0.18
        draw.rectangle((cx - neck, box[1], cx + neck, box[1] + ph * 0.3), fill=255)
        draw.rounded_rectangle(
            (box[0], box[1] + ph * 0.25, box[2], box[3]), radius=pw * 0.2, fill=255
        )
    shade = Image.radial_gradient("L").resize((int(pw * 1.6) + 1, int(ph * 1.6) + 1))
    shading = Image.new("L", image.size, 255)
    shading.paste(shade, (int(cx - pw * 0.9), int(cy - ph * 0.9)))
    dark, light = _colour(rng, 10, 120), _colour(rng, 120, 250)
    image.paste(ImageOps.colorize(shading, light, dark), mask=body)
    # A label or band with a few "letters", and a specular highlight.
    draw_rgb = ImageDraw.Draw(image)
    band = (box[0] + pw * 0.15, cy - ph * 0.1, box[2] - pw * 0.15, cy + ph * 0.12)
    draw_rgb.rectangle(band, fill=_colour(rng, 180, 255))
    for i in range(rng.randint(4, 9)):
        x = band[0] + (band[2] - band[0]) * (0.08 + 0.1 * i)
        if x + pw * 0.05 < band[2]:
            draw_rgb.rectangle(
                (x, cy - ph * 0.04, x + pw * 0.05, cy + ph * 0.05), fill=_colour(rng, 0, 90)
            )
    glint = Image.new("L", image.size, 0)
    ImageDraw.Draw(glint).ellipse(
        (cx - pw * 0.3, box[1] + ph * 0.08, cx - pw * 0.15, box[1] + ph * 0.3), fill=150
    )
    image.paste((255, 255, 255), mask=glint.filter(ImageFilter.GaussianBlur(max(3, w // 120))))


def make_image(index: int) -> Image.Image:
    """The ``index``-th catalogue photo: the same pixels for the same index, every run."""
    rng = random.Random(index)
    size = _size(rng)
    image = _background(rng, size)
    _product(rng, image)
    # Mild sensor noise, from the seeded generator (Pillow's effect_noise is not seeded):
    # uniform bytes scaled to NOISE_SIGMA around 128, added and offset back.
    noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    noise = noise.point(_NOISE_LUT)
    return ImageChops.add(image, noise, 1.0, -128)


def make_catalogue(directory: Path, count: int) -> list[Path]:
    """Writes ``count`` catalogue JPEGs into ``directory``; returns their paths, sorted."""
    paths = []
    for i in range(count):
        path = directory / f"p{i:04d}.jpg"
        make_image(i).save(path, quality=QUALITY)
        paths.append(path)
    return paths
