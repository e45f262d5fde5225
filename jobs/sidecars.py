"""``results --format txt -o DIR``: one sidecar text file per succeeded item, as captioning tools
(TagGUI, kohya, JoyCaption scripts) write one ``.txt`` beside each image.

Where each goes (docs/cli.md#caption-sidecars):

- an item read from a file goes to its path relative to the deepest folder holding all of the
  job's local inputs (an ``s3://`` one: its key relative to the deepest prefix holding all of
  the job's objects), its extension replaced by ``.txt``: ``photos/a/x.jpg`` -> ``a/x.txt``;
- an item with no file name (an OpenAI-Batch line's ``data:`` image, a request of text alone)
  goes to ``<custom_id>.txt`` at the top of DIR, or ``<item id>.txt`` without a custom_id.

Names are made safe lexically, never by asking the input's file system: ``..``, ``.``, a
leading ``/`` and empty segments are dropped, control characters and ``\\`` become ``_``, and
a segment is cut to ``MAX_SEGMENT_BYTES``; a folder under DIR that is a symbolic link out of it
is never written through. Two items that would write one file (a name found in two folders
that the root flattens, ``x.jpg`` beside ``x.png``, names equal but for case or Unicode
normalisation, one input submitted twice) do not: the first in submission order gets the name,
each later one ``<name>~<seq>.txt`` (``seq``: its position in the job from 0, the row of
``results`` less one). The names are given over all of the job's items, whatever their state,
so an export after a retry names each item as the one before did.

Both passes page through the job (``jobs.paging``); what is kept is the root, and for each item
an 8-byte digest of its name, to find names given twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from jobs.errors import RequestError
from jobs.kinds.registry import get_kind
from jobs.paging import ItemRecord
from jobs.queries import find_job, iter_items, iter_sources
from jobs.states import ItemStatus
from storage import is_s3_uri, uri_scheme

SUFFIX = ".txt"
MAX_SEGMENT_BYTES = 200  # under the 255 of most file systems, with room for "~seq.txt"
# Control characters, separators ("/" in a custom_id, "\\" elsewhere) and lone surrogates (no
# file name holds one).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\\ud800-\udfff]")
_DROPPED = frozenset({"", ".", "..", "/"})
_NO_RESULT = (ItemStatus.failed, ItemStatus.cancelled, ItemStatus.expired)


@dataclass
class SidecarCounts:
    written: int = 0
    kept: int = 0  # the file was there already (without --overwrite)
    renamed: int = 0  # written under ``<name>~<seq>.txt``: their names collide
    no_result: int = 0  # failed, cancelled or expired: nothing to write
    pending: int = 0  # not finished yet
    escaping: int = 0  # their folder under DIR is a symbolic link out of it

    def summary(self, directory: str) -> str:
        parts = [f"wrote {self.written} sidecar file(s) under {directory}"]
        if self.renamed:
            parts.append(f"{self.renamed} of them named <name>~<seq>.txt: their names collide")
        if self.kept:
            parts.append(f"{self.kept} already there, left as they were (--overwrite replaces)")
        if self.no_result:
            parts.append(f"{self.no_result} failed, cancelled or expired item(s) wrote nothing")
        if self.pending:
            parts.append(f"{self.pending} item(s) not finished yet wrote nothing")
        if self.escaping:
            parts.append(
                f"{self.escaping} not written: their folder under {directory} is a symbolic link "
                "out of it"
            )
        return "; ".join(parts)


def write_sidecars(
    session: Session, job_id: str, directory: str, *, overwrite: bool = False, chunk: int = 1000
) -> SidecarCounts:
    """Writes the job's succeeded items as sidecar files under ``directory``; returns what was
    done. Each file is whole or absent: written to a temporary file beside it, then renamed."""
    job = find_job(session, job_id)
    if not get_kind(job.kind).one_text:
        raise RequestError(
            f"--format txt writes one text per item; a {job.kind} job has several answers per "
            "item: use --format jsonl or csv.",
            code="invalid_option",
        )
    named = name_sidecars(
        iter_sources(session, job_id, chunk=chunk), iter_items(session, job_id, chunk=chunk)
    )
    return write_named(directory, named, overwrite=overwrite)


Named = Iterator[tuple[tuple[str, ...], int, ItemRecord]]


def name_sidecars(sources: Iterable[str], items: Iterable[ItemRecord]) -> Named:
    """Each item (of ``items``, a job's in submission order; ``sources``: their sources, read
    first for the roots) with its sidecar path and 1 when that path was renamed."""
    roots = common_roots(sources)
    names = SidecarNames()
    for item in items:
        relative, renamed = names.take(sidecar_path(item, roots), item.seq)
        yield relative, renamed, item


def write_named(directory: str, named: Named, *, overwrite: bool) -> SidecarCounts:
    """Writes the succeeded items of ``named`` (``name_sidecars``) under ``directory``."""
    try:
        folders = _Folders(Path(directory))
    except OSError as exc:
        raise RequestError(
            f"{directory}: cannot be written ({exc.strerror or exc}).", code="invalid_output"
        ) from exc
    counts = SidecarCounts()
    for relative, renamed, item in named:
        if item.status in _NO_RESULT:
            counts.no_result += 1
        elif item.status != ItemStatus.succeeded:
            counts.pending += 1
        else:
            counts.renamed += renamed
            _write_one(folders, relative, sidecar_text(item), overwrite, counts)
    return counts


def sidecar_text(item: ItemRecord) -> str:
    """What an item's sidecar holds: its text as it is (no line break added), or its JSON
    result as one line of JSON."""
    if item.result_json is not None:
        return json.dumps(item.result_json, ensure_ascii=False)
    return item.result_text or ""


Roots = dict[str, tuple[str, ...]]  # family ("local", "s3") -> the folder holding all of it


def _family_parts(source: str) -> tuple[str, tuple[str, ...]] | None:
    """A file-named source's family and path segments (its name last); None without a file
    name (``data:``, a request of text alone, any other scheme)."""
    if is_s3_uri(source):
        return "s3", tuple(source[len("s3://") :].split("/"))
    if not source or uri_scheme(source) is not None:
        return None
    parts = Path(posixpath.normpath(source)).parts
    if parts and parts[0].startswith("/"):  # "//x" keeps its two slashes as its anchor
        parts = ("/", *parts[1:])
    return "local", parts


def common_roots(sources: Iterable[str]) -> Roots:
    """The deepest folder (or bucket prefix) holding every file of each family."""
    roots: Roots = {}
    for source in sources:
        found = _family_parts(source)
        if found is None:
            continue
        family, parts = found
        folder = parts[:-1]
        known = roots.get(family)
        if known is None:
            roots[family] = folder
            continue
        same = 0
        for a, b in zip(known, folder, strict=False):
            if a != b:
                break
            same += 1
        roots[family] = known[:same]
    return roots


def sidecar_path(item: ItemRecord, roots: Roots) -> tuple[str, ...]:
    """The item's sidecar path under DIR, as safe segments, before any collision is settled."""
    found = _family_parts(item.source)
    if found is not None:
        family, parts = found
        relative = [_safe(p) for p in parts[len(roots.get(family, ())) :] if p not in _DROPPED]
        if relative:
            stem = _cut(posixpath.splitext(relative[-1])[0] or relative[-1])
            return (*relative[:-1], stem + SUFFIX)
    name = _safe(item.custom_id or item.id)
    return (_cut(name if name not in _DROPPED else item.id) + SUFFIX,)


def _safe(segment: str) -> str:
    return _cut(_UNSAFE.sub("_", segment))


def _cut(segment: str) -> str:
    data = segment.encode("utf-8")
    if len(data) <= MAX_SEGMENT_BYTES:
        return segment
    return data[:MAX_SEGMENT_BYTES].decode("utf-8", "ignore")


class SidecarNames:
    """Gives each item a name no earlier item of the export took, comparing names as a file
    system that ignores case and Unicode normalisation would (macOS, Windows): the DIR may be
    copied to one."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def take(self, path: tuple[str, ...], seq: int) -> tuple[tuple[str, ...], int]:
        """The path to write (``path`` or a renamed one) and 1 when it was renamed."""
        candidates = _renamings(path, seq)
        for renamed, candidate in enumerate(candidates):
            key = _key(candidate)
            if key not in self._taken:
                self._taken.add(key)
                return candidate, min(renamed, 1)
        raise AssertionError("unreachable: the renamings never end")


def _renamings(path: tuple[str, ...], seq: int) -> Iterator[tuple[str, ...]]:
    yield path
    stem = path[-1][: -len(SUFFIX)]
    yield (*path[:-1], f"{stem}~{seq}{SUFFIX}")
    n = 2
    while True:  # only when "x~seq.txt" is itself an input's name
        yield (*path[:-1], f"{stem}~{seq}~{n}{SUFFIX}")
        n += 1


def _key(path: tuple[str, ...]) -> int:
    folded = unicodedata.normalize("NFC", "/".join(path)).casefold()
    digest = hashlib.blake2b(folded.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _write_one(
    folders: _Folders, relative: tuple[str, ...], text: str, overwrite: bool, counts: SidecarCounts
) -> None:
    target = folders.root.joinpath(*relative)
    try:
        if not folders.make(relative[:-1]):
            counts.escaping += 1
            return
        if not overwrite and os.path.lexists(target):
            counts.kept += 1
            return
        if _place(target, text.encode("utf-8", "replace"), overwrite):
            counts.written += 1
        else:
            counts.kept += 1
    except OSError as exc:
        raise RequestError(
            f"{target}: cannot be written ({exc.strerror or exc}); {counts.written} sidecar "
            "file(s) were written before it.",
            code="invalid_output",
        ) from exc


class _Folders:
    """The folders under DIR, made one segment at a time, each resolved once to check that it
    lies inside DIR: one already there that resolves elsewhere (a symbolic link out) is never
    written through, nor made under."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._real_root = Path(os.path.realpath(root))
        self._inside: dict[Path, bool] = {}

    def make(self, folders: tuple[str, ...]) -> bool:
        path = self.root
        for folder in folders:
            path = path / folder
            inside = self._inside.get(path)
            if inside is None:
                with contextlib.suppress(FileExistsError):  # made before, or a link
                    path.mkdir()
                inside = Path(os.path.realpath(path)).is_relative_to(self._real_root)
                self._inside[path] = inside
            if not inside:
                return False
        return True


def _place(target: Path, data: bytes, overwrite: bool) -> bool:
    """Writes ``data`` to a temporary file beside ``target`` and moves it there: replacing what
    is there (``overwrite``), or only if nothing is (False when something was)."""
    # A short name of its own: the target's may already be as long as a name can be.
    temporary = str(target.with_name(f".{uuid.uuid4().hex}.tmp"))
    # 0o666 less the umask, as any file the user makes (mkstemp would make it owner-only).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the name points at it
        if overwrite:
            os.replace(temporary, target)
            return True
        try:
            # A hard link never replaces a file: one made meanwhile is left alone.
            os.link(temporary, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A file system without hard links: checked, then renamed (a file made between
            # the two would be replaced).
            if os.path.lexists(target):
                return False
            os.rename(temporary, target)
            return True
        return True
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
