"""Turns what the user typed (files, directories, s3:// prefixes, .jsonl manifests) into inputs.

Pure validation and listing: nothing is written here, so a refused request leaves no trace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.errors import RequestError
from storage import Blobs, StorageError, is_s3_uri, parse_s3_uri

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DOCUMENT_EXTENSIONS = IMAGE_EXTENSIONS | {".pdf"}


@dataclass(frozen=True)
class InputSpec:
    source: str  # exactly as the user gave it (or as found under a directory they gave)
    local_path: Path | None = None
    uri: str | None = None  # an object in a user's bucket, read in place
    prompt: str | None = None
    custom_id: str | None = None


def expand_sources(
    sources: Sequence[str],
    *,
    blobs: Blobs,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> list[InputSpec]:
    inputs: list[InputSpec] = []
    for source in sources:
        inputs.extend(_expand_one(source, blobs=blobs, extensions=extensions))
    if not inputs:
        raise RequestError("No input files were found in the given sources.", code="no_inputs")
    _check_unique_ids(inputs)
    return inputs


def _expand_one(source: str, *, blobs: Blobs, extensions: frozenset[str]) -> Iterator[InputSpec]:
    if "\x00" in source:
        raise RequestError("A source contains a NUL byte.", code="invalid_source")
    if is_s3_uri(source):
        yield from _expand_s3(source, blobs=blobs, extensions=extensions)
        return
    path = Path(source)
    if not path.exists():
        raise RequestError(f"{source}: no such file or directory.", code="source_not_found")
    if path.is_dir():
        yield from _expand_directory(source, extensions)
    elif path.suffix.lower() == ".jsonl":
        yield from _read_manifest(path, blobs=blobs, extensions=extensions)
    else:
        yield InputSpec(source=source, local_path=path)


def _expand_s3(uri: str, *, blobs: Blobs, extensions: frozenset[str]) -> Iterator[InputSpec]:
    try:
        parse_s3_uri(uri)
        found = False
        for obj in blobs.list_uri(uri):
            # A prefix lists everything under it; only images are inputs. An exact key is an
            # input whatever its name.
            if obj.uri == uri or Path(obj.key).suffix.lower() in extensions:
                found = True
                yield InputSpec(source=obj.uri, uri=obj.uri)
    except StorageError as exc:
        raise RequestError(f"{uri}: {exc}", code=exc.code) from exc
    if not found:
        raise RequestError(f"{uri}: no image objects under this prefix.", code="no_inputs")


def _expand_directory(source: str, extensions: frozenset[str]) -> Iterator[InputSpec]:
    root = Path(source).resolve()
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in extensions:
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise RequestError(
                    f"{path}: symbolic link points outside {source}; refusing to read it.",
                    code="symlink_escape",
                )
            yield InputSpec(source=str(path), local_path=path)


def _read_manifest(
    manifest: Path, *, blobs: Blobs, extensions: frozenset[str]
) -> Iterator[InputSpec]:
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RequestError(f"{manifest}: not valid UTF-8.", code="manifest_invalid") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        given, prompt, custom_id = _parse_manifest_line(manifest, number, line)
        target = given
        if not is_s3_uri(target) and not Path(target).is_absolute():
            target = str(manifest.parent / target)
        for spec in _expand_one(target, blobs=blobs, extensions=extensions):
            yield InputSpec(
                source=given if spec.source == target else spec.source,
                local_path=spec.local_path,
                uri=spec.uri,
                prompt=prompt,
                custom_id=custom_id,
            )


def _parse_manifest_line(
    manifest: Path, number: int, line: str
) -> tuple[str, str | None, str | None]:
    """Returns (input, prompt, custom id) of one manifest line."""
    where = f"{manifest}, line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"{where}: not valid JSON ({exc.msg}).", code="manifest_invalid"
        ) from exc
    if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
        raise RequestError(
            f'{where}: expected an object with a string "input" field.', code="manifest_invalid"
        )
    if "prompt" in entry and not isinstance(entry["prompt"], str):
        raise RequestError(f'{where}: "prompt" must be a string.', code="manifest_invalid")
    if "id" in entry and not isinstance(entry["id"], str | int):
        raise RequestError(f'{where}: "id" must be a string.', code="manifest_invalid")
    custom_id = entry.get("id")
    return entry["input"], entry.get("prompt"), None if custom_id is None else str(custom_id)


def _check_unique_ids(inputs: Sequence[InputSpec]) -> None:
    seen: set[str] = set()
    for spec in inputs:
        if spec.custom_id is None:
            continue
        if spec.custom_id in seen:
            raise RequestError(
                f"The custom id {spec.custom_id!r} appears more than once.", code="duplicate_id"
            )
        seen.add(spec.custom_id)
