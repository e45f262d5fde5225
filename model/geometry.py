"""Where a box the model gave lies in the original image.

A LLaVA model writes a box as four numbers in [0, 1], normalised to the picture it was shown,
which is not the image a user has: the checkpoint's processor padded it to a square with the
mean colour (LLaVA-1.5's ``expand2square``, transformers' ``LlavaImageProcessor(do_pad=True)``),
or resized its shortest edge and cut a centre crop (``CLIPImageProcessor``), or, for LLaVA-NeXT,
resized it into the best grid resolution and padded the rest (``image_grid_pinpoints``). Here a
``Preprocessing`` says which of these a processor does (read from its configuration by
``preprocessing_of``), a ``Frame`` is what it did to one image (the canvas the model's
coordinates are normalised to, and where the image lies in it), and ``to_source`` maps a box
from that canvas to the original image's pixels (``to_model`` is its inverse).

Pure arithmetic: this module imports nothing of the project, nor Pillow or torch, so it can be
tested alone and read by anyone. docs/kinds/locate.md says which checkpoint uses which frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Box",
    "Frame",
    "Located",
    "Preprocessing",
    "Size",
    "frame_of",
    "image_frame",
    "preprocessing_of",
    "source_scale",
    "to_model",
    "to_source",
]

Size = tuple[int, int]  # width, height
Box = tuple[float, float, float, float]  # x1, y1, x2, y2

# A decoder may read a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling): each of its pixels
# then stands for a block of this many source pixels a side, the last block cut at the edge.
_DRAFT_SCALES = (1, 2, 4, 8)

PAD = "padded_square"  # padded to a square with the mean colour, then resized (and cropped)
CROP = "centre_crop"  # shortest edge resized, then a centre crop
ANYRES = "anyres_grid"  # LLaVA-NeXT: resized into the best grid resolution, the rest padded
RESIZED = "resized"  # resized to a fixed size, aspect not kept
IMAGE = "image"  # no processor known: the box is taken as normalised to the image itself


@dataclass(frozen=True)
class Preprocessing:
    """What an image processor does to an image's geometry (not its colours).

    ``pad_to_square``: pad first (LLaVA-1.5). ``shortest_edge`` or ``size``: the resize, its
    shortest edge to a length (the other edge ``int(length * long / short)``, as transformers
    computes it) or to a fixed width and height. ``crop``: the centre crop's width and height,
    its offset ``(length - crop) // 2``; on an image smaller than the crop the two backends
    centre it differently: numpy/PIL (``crop_backend`` ``numpy``) rounds the padding before
    it up, torchvision's ``center_crop`` (``torchvision``) down. ``pinpoints``: LLaVA-NeXT's
    grid resolutions, each ``(width, height)``: when present, the frame is the best of them.
    """

    pad_to_square: bool = False
    shortest_edge: int | None = None
    size: Size | None = None
    crop: Size | None = None
    crop_backend: str = "numpy"
    pinpoints: tuple[Size, ...] = ()


@dataclass(frozen=True)
class Frame:
    """The canvas a box from the model is normalised to, for one image fed to it.

    ``canvas``: its width and height in the processor's pixels. The fed image (``fed`` pixels
    wide and high) lies on it scaled by ``scale`` with its top-left corner at ``origin``; a
    centre crop puts the origin at negative coordinates and the image's far edge past the
    canvas, padding puts the image inside with room around it.
    """

    name: str
    canvas: tuple[float, float]
    origin: tuple[float, float]
    scale: tuple[float, float]
    fed: Size

    @property
    def image_box(self) -> Box:
        """Where the fed image lies on the canvas, in canvas pixels."""
        (ox, oy), (sx, sy), (w, h) = self.origin, self.scale, self.fed
        return (ox, oy, ox + w * sx, oy + h * sy)

    def describe(self) -> dict[str, Any]:
        """The frame as recorded with a result: plain JSON."""
        return {
            "name": self.name,
            "canvas": [_plain(v) for v in self.canvas],
            "image_in_canvas": [_plain(v) for v in self.image_box],
            "fed": list(self.fed),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "canvas": list(self.canvas),
            "origin": list(self.origin),
            "scale": list(self.scale),
            "fed": list(self.fed),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Frame:
        cw, ch = data["canvas"]
        ox, oy = data["origin"]
        sx, sy = data["scale"]
        fw, fh = data["fed"]
        return cls(str(data["name"]), (cw, ch), (ox, oy), (sx, sy), (int(fw), int(fh)))


def image_frame(fed: Size) -> Frame:
    """The frame of the image itself: for an engine that says nothing of its processor."""
    return Frame(IMAGE, (float(fed[0]), float(fed[1])), (0.0, 0.0), (1.0, 1.0), fed)


def frame_of(prep: Preprocessing, fed: Size) -> Frame:
    """The frame ``prep`` puts an image of ``fed`` pixels in (transformers' arithmetic)."""
    width, height = fed
    if prep.pinpoints:
        return _anyres(prep.pinpoints, fed)
    origin = (0.0, 0.0)
    scale = (1.0, 1.0)
    current: tuple[float, float] = (float(width), float(height))
    name = RESIZED
    if prep.pad_to_square:
        side = max(width, height)
        origin = (float((side - width) // 2), float((side - height) // 2))
        current = (float(side), float(side))
        name = PAD
    target = _resized(prep, (int(current[0]), int(current[1])))
    if target is not None:
        fx, fy = target[0] / current[0], target[1] / current[1]
        origin = (origin[0] * fx, origin[1] * fy)
        scale = (scale[0] * fx, scale[1] * fy)
        current = (float(target[0]), float(target[1]))
    if prep.crop is not None:
        cut_x = _crop_offset(int(current[0]), prep.crop[0], prep.crop_backend)
        cut_y = _crop_offset(int(current[1]), prep.crop[1], prep.crop_backend)
        origin = (origin[0] - cut_x, origin[1] - cut_y)
        current = (float(prep.crop[0]), float(prep.crop[1]))
        if not prep.pad_to_square:
            name = CROP
    return Frame(name, current, origin, scale, fed)


def _resized(prep: Preprocessing, size: Size) -> Size | None:
    width, height = size
    if prep.shortest_edge is not None:
        short, long = min(width, height), max(width, height)
        new_short, new_long = prep.shortest_edge, int(prep.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    return prep.size


def _crop_offset(length: int, crop: int, backend: str) -> float:
    """How far the crop's first pixel lies into the resized image (negative: the crop is the
    larger, and the image lies inside it). transformers' numpy ``center_crop`` pads a small
    image by ``ceil((crop - length) / 2)`` before it, which ``(length - crop) // 2`` gives too;
    its torchvision one pads ``(crop - length) // 2`` before, and crops ``int(d / 2.0)``
    (``d`` >= 0: the same floor) otherwise."""
    if backend == "torchvision" and length < crop:
        return float(-((crop - length) // 2))
    return float((length - crop) // 2)


def _anyres(pinpoints: Sequence[Size], fed: Size) -> Frame:
    """LLaVA-NeXT's grid: the best resolution (``select_best_resolution``), the image resized
    into it keeping its aspect (``get_patch_output_size``) and centred, the rest padded."""
    width, height = fed
    best: Size | None = None
    most, least_wasted = 0, math.inf
    for grid_w, grid_h in pinpoints:
        scale = min(grid_w / width, grid_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = grid_w * grid_h - effective
        if effective > most or (effective == most and wasted < least_wasted):
            best, most, least_wasted = (grid_w, grid_h), effective, wasted
    if best is None:
        raise ValueError("no grid resolution fits the image")
    grid_w, grid_h = best
    if grid_w / width < grid_h / height:
        new_w, new_h = grid_w, min(math.ceil(height * grid_w / width), grid_h)
    else:
        new_w, new_h = min(math.ceil(width * grid_h / height), grid_w), grid_h
    origin = (float((grid_w - new_w) // 2), float((grid_h - new_h) // 2))
    return Frame(
        ANYRES, (float(grid_w), float(grid_h)), origin, (new_w / width, new_h / height), fed
    )


def preprocessing_of(processor: Any) -> Preprocessing | None:
    """What a transformers image processor does to geometry, from its configuration; None for
    one this module does not know (its boxes then cannot be mapped).

    Read by duck typing, so this module needs no transformers: ``image_grid_pinpoints`` makes
    LLaVA-NeXT's grid; ``do_pad`` pads to a square only on ``LlavaImageProcessor`` (on other
    processors it pads a batch to one size, which moves nothing); ``size`` and ``crop_size``
    give the resize and the crop when ``do_resize`` and ``do_center_crop`` are on."""
    pinpoints = getattr(processor, "image_grid_pinpoints", None)
    if pinpoints:
        # transformers lists each as [height, width].
        return Preprocessing(pinpoints=tuple((int(w), int(h)) for h, w in pinpoints))
    name = type(processor).__name__
    pad = name.startswith("LlavaImageProcessor") and bool(getattr(processor, "do_pad", False))
    size = _as_dict(getattr(processor, "size", None))
    crop = _as_dict(getattr(processor, "crop_size", None))
    shortest, fixed = None, None
    if getattr(processor, "do_resize", True) and size:
        if size.get("shortest_edge") and not size.get("longest_edge"):
            shortest = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            fixed = (int(size["width"]), int(size["height"]))
        else:
            return None
    cut = None
    if getattr(processor, "do_center_crop", False) and crop:
        if not (crop.get("height") and crop.get("width")):
            return None
        cut = (int(crop["width"]), int(crop["height"]))
    # transformers' PIL processors crop with numpy; the others with torchvision.
    backend = (
        "numpy" if name.endswith("Pil") or "pil" in type(processor).__module__ else "torchvision"
    )
    return Preprocessing(
        pad_to_square=pad, shortest_edge=shortest, size=fixed, crop=cut, crop_backend=backend
    )


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    return {k: v for k, v in vars(value).items() if v is not None}  # transformers' SizeDict


def source_scale(source: Size, fed: Size) -> tuple[float, float]:
    """Source pixels per fed pixel. A JPEG decoded at a reduced scale has ``ceil(side / s)``
    pixels a side for a power of two ``s``, each standing for ``s`` source pixels; any other
    difference is taken as a plain resize."""
    for s in _DRAFT_SCALES:
        if -(-source[0] // s) == fed[0] and -(-source[1] // s) == fed[1]:
            return (float(s), float(s))
    return (source[0] / fed[0], source[1] / fed[1])


@dataclass(frozen=True)
class Located:
    """A box in the original image: ``pixels`` (whole pixels, edges between pixels: a box of
    the whole image is ``(0, 0, width, height)``), ``normalised`` to the image's width and
    height, and ``flags``: ``clipped_to_image`` (part of the box lay in the padding around the
    image, and was cut off), ``outside_image`` (all of it did: nothing is left),
    ``beyond_crop`` (an edge lies on the border of a centre crop, past which the image went on
    unseen: the object may reach further)."""

    pixels: tuple[int, int, int, int]
    normalised: Box
    flags: tuple[str, ...]


def to_source(box: Box, frame: Frame, source: Size, *, tolerance: float = 0.0) -> Located:
    """``box``, normalised to ``frame``'s canvas (x1 <= x2, y1 <= y2), in ``source``'s pixels.

    ``source``: the original image's size, upright (after its EXIF orientation), of which the
    fed image is the whole, maybe decoded at a reduced scale. ``tolerance``: how far (a share
    of the canvas) a box may stray into padding, or stop short of a crop's border, before it is
    flagged; the precision of the numbers the model writes."""
    x1, y1, x2, y2 = box
    canvas_w, canvas_h = frame.canvas
    left, top, right, bottom = frame.image_box
    cx1, cx2 = x1 * canvas_w, x2 * canvas_w
    cy1, cy2 = y1 * canvas_h, y2 * canvas_h
    flags: list[str] = []
    slack_x, slack_y = tolerance * canvas_w, tolerance * canvas_h
    strays = (
        cx1 < left - slack_x
        or cx2 > right + slack_x
        or cy1 < top - slack_y
        or cy2 > bottom + slack_y
    )
    # Outside: in the padding, with no area of the image left (a box ending on its edge too;
    # a box of no area on the image, such as [0, 0, 0, 0], is not in the padding).
    if (
        (cx2 <= left and cx1 < left)
        or (cx1 >= right and cx2 > right)
        or (cy2 <= top and cy1 < top)
        or (cy1 >= bottom and cy2 > bottom)
    ):
        flags.append("outside_image")
    elif strays:
        flags.append("clipped_to_image")
    edges = (
        (left < 0 and cx1 <= slack_x)
        or (right > canvas_w and cx2 >= canvas_w - slack_x)
        or (top < 0 and cy1 <= slack_y)
        or (bottom > canvas_h and cy2 >= canvas_h - slack_y)
    )
    if edges:
        flags.append("beyond_crop")
    (ox, oy), (sx, sy) = frame.origin, frame.scale
    fx, fy = source_scale(source, frame.fed)
    width, height = source

    def back(value: float, origin: float, scale: float, src: float, limit: int) -> int:
        return min(max(round((value - origin) / scale * src), 0), limit)

    pixels = (
        back(cx1, ox, sx, fx, width),
        back(cy1, oy, sy, fy, height),
        back(cx2, ox, sx, fx, width),
        back(cy2, oy, sy, fy, height),
    )
    normalised = (pixels[0] / width, pixels[1] / height, pixels[2] / width, pixels[3] / height)
    return Located(pixels, normalised, tuple(flags))


def to_model(pixels: Box, frame: Frame, source: Size) -> Box:
    """The inverse of ``to_source``: a box in ``source``'s pixels, normalised to the frame's
    canvas (not clipped: a box cut off by a crop reaches past 0 or 1)."""
    x1, y1, x2, y2 = pixels
    (ox, oy), (sx, sy) = frame.origin, frame.scale
    fx, fy = source_scale(source, frame.fed)
    canvas_w, canvas_h = frame.canvas
    return (
        (x1 / fx * sx + ox) / canvas_w,
        (y1 / fy * sy + oy) / canvas_h,
        (x2 / fx * sx + ox) / canvas_w,
        (y2 / fy * sy + oy) / canvas_h,
    )


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 3)
