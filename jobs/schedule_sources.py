"""What a schedule watches: an S3 prefix or a local folder, listed into versions and turned into
inputs the way ``submit`` turns its sources into inputs.

A listed file is a (key, version) pair; a schedule processes each pair once
(``schedule_objects``). For an S3 object the key is its key in the bucket and the version its
ETag, as before schedules had kinds. For a local file the key is its path relative to the folder
and the version its ``{mtime_ns}-{size}`` stamp, the one storage's own listing uses: stat only,
so a listing costs no read however large the folder. Hashing every file at every firing would
read the whole folder each time to save the rare re-run of a file rewritten with the same bytes
(which is what ``touch`` or a re-copy does: such a file is processed again, as a replaced one is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from jobs.errors import RequestError
from jobs.limits import is_utf8, printable
from jobs.submit.sources import InputSpec, expand_sources
from storage import Blobs, LocalStore, ObjectInfo, StorageError, is_s3_uri, parse_s3_uri, uri_scheme

log = logging.getLogger(__name__)


def build_source(source: str) -> str:
    """The source a schedule stores: an ``s3://bucket/prefix/`` as given, or a local folder as
    an absolute path (a relative one is resolved now, against the current directory)."""
    if "\x00" in source or not is_utf8(source) or not source.strip():
        raise RequestError(
            f"{printable(source)!r} is not a usable source name.", code="invalid_source"
        )
    if is_s3_uri(source):
        try:
            parse_s3_uri(source)
        except StorageError as exc:
            raise RequestError(f"{source}: {exc}", code=exc.code) from exc
        return source
    if uri_scheme(source) is not None:
        raise RequestError(
            f"{source[:200]}: a schedule watches an s3://bucket/prefix/ or a local folder.",
            code="invalid_source",
        )
    path = Path(os.path.abspath(source))  # keeps symbolic links as typed, unlike resolve()
    if not path.exists():
        raise RequestError(f"{path}: no such folder.", code="source_not_found")
    if not path.is_dir():
        raise RequestError(
            f"{path}: a schedule watches a folder (or an s3:// prefix), not one file.",
            code="invalid_source",
        )
    return str(path)


def list_source(source: str, blobs: Blobs, extensions: frozenset[str]) -> list[ObjectInfo]:
    """The inputs under ``source`` now, of the given file types; ``key`` and ``etag`` say which
    file and which version. RequestError (a folder this machine does not have) or StorageError
    when it cannot be listed."""
    if is_s3_uri(source):
        return [o for o in blobs.list_uri(source) if _counts(o.key, extensions)]
    root = Path(source)
    if not root.is_dir():
        raise RequestError(f"{source}: no such folder on this machine.", code="source_not_found")
    found = []
    # Recursive, like a folder given to `submit`; symbolic links are never followed.
    for obj in LocalStore(root).list_objects():
        if not _counts(obj.key, extensions) or _is_hidden(obj.key):
            continue
        if not is_utf8(obj.key):  # could never be stored in the database; rename it
            log.warning("schedule source %s: %s is not valid UTF-8", source, printable(obj.key))
            continue
        found.append(obj)
    return found


def build_inputs(
    source: str,
    listed: Sequence[ObjectInfo],
    *,
    blobs: Blobs,
    extensions: frozenset[str],
    max_input_bytes: int,
) -> list[InputSpec]:
    """The inputs of a firing, in listing order. An S3 object is read in place by the worker, as
    a submitted one is. A local file is checked as ``submit`` checks it (and is then stored as
    ``submit`` stores it); one that ``submit`` would refuse (empty, over the size limit) becomes
    an item that fails with that code, so one bad file never holds back the others."""
    if is_s3_uri(source):
        return [InputSpec(source=o.uri, uri=o.uri, size=o.size, version=o.etag) for o in listed]
    return [
        _local_input(str(Path(source) / o.key), blobs, extensions, max_input_bytes) for o in listed
    ]


def _local_input(
    path: str, blobs: Blobs, extensions: frozenset[str], max_input_bytes: int
) -> InputSpec:
    try:
        (spec,) = expand_sources(
            [path], blobs=blobs, extensions=extensions, max_input_bytes=max_input_bytes
        )
    except RequestError as exc:
        return InputSpec(source=path, uri=path, input_error=(exc.code, exc.message))
    return spec


def _counts(key: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(key)[1].lower() in extensions


def _is_hidden(key: str) -> bool:
    """A dot file or anything in a dot folder: editors' and copy tools' temporary files, macOS's
    ``._name.jpg`` resource forks, thumbnail caches. None of them is a user's input."""
    return any(part.startswith(".") for part in key.split("/"))
