"""The boxes a kind that finds them (``finds_boxes``: ``locate``) drew on an item's image, as the
item page shows them: each expression its own colour, drawn by us into the picture we encode
(no script, no inline style: the page's policy allows neither), with a legend beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

# Distinct on photographs and for the commonest colour blindness (Sasha Trubetskoy's list);
# the page's legend uses the same order (review.css: .box-c0 … .box-c7).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (255, 225, 25),
)


@dataclass(frozen=True)
class Box:
    expression: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1] of the original image
    colour: int  # index into PALETTE


def boxes_of(finds_boxes: bool, result: Any) -> list[Box]:
    """The boxes of a result (a list of entries with a normalised ``box``); none for a kind
    that finds none, or an entry without a usable box (a failed expression, an edit)."""
    if not finds_boxes or not isinstance(result, list):
        return []
    found = []
    for index, entry in enumerate(result):
        box = entry.get("box") if isinstance(entry, dict) else None
        if box is None or not _is_box(box):
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        found.append(
            Box(str(entry.get("expression") or ""), (x1, y1, x2, y2), index % len(PALETTE))
        )
    return found


def _is_box(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(0 <= v <= 1 for v in value)
        and value[0] <= value[2]
        and value[1] <= value[3]
    )


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """``image`` (the upright original, at any scale) with each box outlined in its colour."""
    if not boxes:
        return image
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    # Thick enough to see at a glance and to keep its colour through JPEG's chroma subsampling.
    line = max(4, round(max(width, height) / 100))
    for found in boxes:
        x1, y1, x2, y2 = found.box
        draw.rectangle(
            (x1 * (width - 1), y1 * (height - 1), x2 * (width - 1), y2 * (height - 1)),
            outline=PALETTE[found.colour],
            width=line,
        )
    return image
