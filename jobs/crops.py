"""``results JOB --crops DIR``: each box a ``locate`` job found, cut out of its image as a PNG.

A crop is named after its item and its expression: the item's sidecar name
(``jobs.sidecars``: its path under the inputs' common folder, or its custom_id) without the
extension, then ``.<n>-<expression>.png`` with ``n`` the expression's number from 1 and the
expression cut to a safe slug: ``shelf/p1.jpg`` with "the red bus" as its second expression
writes ``shelf/p1.2-the-red-bus.png``. The image is read from the store as the worker read it
and turned upright by its EXIF orientation, the frame the pixel boxes are in. A box of no area
(one that lay wholly in the padding) writes nothing. Folders are made as sidecars' are: one under
DIR that links out of it is never written through.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from jobs.db import Item
from jobs.errors import RequestError
from jobs.kinds.registry import get_kind
from jobs.paging import items_after, walk
from jobs.queries import find_job, iter_sources
from jobs.sidecars import SUFFIX, SidecarNames, _Folders, _place, common_roots, sidecar_path
from jobs.states import ItemStatus
from storage import Blobs, StorageError

SLUG_CHARS = 40
_NOT_SLUG = re.compile(r"[^0-9a-z]+")
_COLUMNS = (
    Item.id,
    Item.seq,
    Item.custom_id,
    Item.source,
    Item.input_uri,
    Item.status,
    Item.result_json,
)
_WITH_BOXES = (ItemStatus.succeeded, ItemStatus.failed)  # a failed item may have some


@dataclass
class CropCounts:
    written: int = 0
    empty: int = 0  # boxes of no area
    unreadable: int = 0  # items whose image is gone from the store, or no longer decodes
    escaping: int = 0  # their folder under DIR is a symbolic link out of it

    def summary(self, directory: str) -> str:
        parts = [f"wrote {self.written} crop(s) under {directory}"]
        if self.empty:
            parts.append(f"{self.empty} box(es) of no area wrote nothing")
        if self.unreadable:
            parts.append(f"{self.unreadable} item(s) whose image could not be read wrote nothing")
        if self.escaping:
            parts.append(
                f"{self.escaping} not written: their folder under {directory} is a symbolic link "
                "out of it"
            )
        return "; ".join(parts)


def write_crops(
    session: Session,
    job_id: str,
    directory: str,
    blobs: Blobs,
    *,
    chunk: int = 1000,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> CropCounts:
    """Writes every box of the job's items (succeeded, or failed with some boxes found) as a
    PNG under ``directory``; returns what was done. Images are read under the budgets the
    worker ran them under (``LLAVA_BATCH_MAX_IMAGE_PIXELS``, ``_MAX_INPUT_BYTES``): what a
    worker found boxes in is cut, and nothing bigger is decoded."""
    from model.errors import InputError
    from model.images import DEFAULT_MAX_PIXELS, decode_image

    job = find_job(session, job_id)
    if not get_kind(job.kind).finds_boxes:
        raise RequestError(
            f"--crops cuts the boxes of a locate job out of its images; {job_id} is a "
            f"{job.kind} job, which finds none.",
            code="invalid_option",
        )
    try:
        # As sidecars' folders: made a segment at a time, never written through a link out.
        folders = _Folders(Path(directory))
    except OSError as exc:
        raise RequestError(
            f"{directory}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
        ) from exc
    roots = common_roots(iter_sources(session, job_id, chunk=chunk))
    names = SidecarNames()
    counts = CropCounts()
    for item in _items(session, job_id, chunk):
        # Named over every item, whatever its state, as sidecars are: the same names each time.
        base, _ = names.take(sidecar_path(item, roots), item.seq)
        boxes = [b for b in item.result_json or () if isinstance(b, dict) and b.get("pixels")]
        if item.status not in _WITH_BOXES or not boxes:
            continue
        try:
            data = blobs.read_uri(item.input_uri, max_bytes=max_bytes)
            image = decode_image(data, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        except (StorageError, InputError):  # collected from the store, or no longer decodes
            counts.unreadable += 1
            continue
        stem = base[-1][: -len(SUFFIX)]
        for index, found in enumerate(item.result_json or ()):
            if not isinstance(found, dict) or not found.get("pixels"):
                continue
            x1, y1, x2, y2 = (int(v) for v in found["pixels"])
            if x2 <= x1 or y2 <= y1:
                counts.empty += 1
                continue
            name = f"{stem}.{index + 1}-{slug(str(found.get('expression', '')))}.png"
            if not _write(folders, (*base[:-1], name), image.crop((x1, y1, x2, y2))):
                counts.escaping += 1
                continue
            counts.written += 1
    return counts


def slug(expression: str) -> str:
    """An expression as a file name's part: lower-case letters and digits joined by ``-``."""
    cut = _NOT_SLUG.sub("-", expression.lower()).strip("-")[:SLUG_CHARS].strip("-")
    return cut or "box"


def _items(session: Session, job_id: str, chunk: int) -> Iterator[Any]:
    return walk(lambda after: items_after(session, job_id, after, limit=chunk, columns=_COLUMNS))


def _write(folders: _Folders, relative: tuple[str, ...], crop: Any) -> bool:
    """Writes the crop whole under DIR (a temporary file renamed over the name, so a link
    standing there is replaced, not followed); False when its folder links out of DIR."""
    target = folders.root.joinpath(*relative)
    try:
        if not folders.make(relative[:-1]):
            return False
        data = io.BytesIO()
        crop.save(data, "PNG")
        return _place(target, data.getvalue(), overwrite=True)
    except OSError as exc:
        raise RequestError(
            f"{target}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
        ) from exc
