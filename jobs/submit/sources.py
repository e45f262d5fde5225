"""Turns what the user typed (files, directories, s3:// prefixes, .jsonl manifests) into inputs,
and so reads ``submit batch``'s files (OpenAI-Batch JSONL: ``jobs.submit.openai_reader``).

Pure validation and listing: nothing is written here, so a refused request leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.errors import RequestError
from jobs.input_policy import ANYTHING, INPUT_NOT_ALLOWED, InputPolicy
from jobs.limits import (
    MAX_CUSTOM_ID_CHARS,
    MAX_LINE_NESTING,
    MAX_MANIFEST_NESTING,
    check_text,
    is_utf8,
    printable,
)
from jobs.settings import DEFAULT_MAX_INPUT_BYTES
from jobs.submit.openai_reader import (
    IMAGES_NOT_SUPPORTED,
    MAX_IMAGES_PER_REQUEST,
    NO_IMAGE,
    TOO_MANY_IMAGES,
    BatchFormat,
    decode_data_uri,
    detect_openai,
    images_refusal,
    looks_like_openai,
    parse_openai_line,
)
from model.nesting import NestingError, loads_bounded
from storage import Blobs, StorageError, is_s3_uri, parse_s3_uri, uri_scheme

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DOCUMENT_EXTENSIONS = IMAGE_EXTENSIONS | {".pdf"}


@dataclass(frozen=True, slots=True)
class InlineImage:
    """Where a ``data:`` image of an OpenAI-Batch file is: its line, by byte offset.

    Checking a file decodes each inline image once (to refuse a bad one, and to learn its size
    and digest) and lets it go; storing it reads its line again. So neither pass holds more
    than the lines in hand, however many images the file inlines (a 2.5 GB file was once held
    whole while it was checked)."""

    file: Path
    offset: int  # where its line starts, in bytes
    line_bytes: int  # the line's length: what reading it again holds, with the image
    where: str
    sha256: str
    max_bytes: int
    index: int = 0  # which of the line's images (0: its first)

    def read(self) -> bytes:
        """The image's bytes, read again from its line; ``source_changed`` if they are not
        the bytes that were checked."""
        try:
            with self.file.open("rb") as f:
                f.seek(self.offset)
                line = f.readline(self.line_bytes).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RequestError(
                f"{self.where}: cannot be read again ({exc}).", code="source_unreadable"
            ) from exc
        changed = RequestError(
            f"{self.where}: the file changed while it was being submitted; submit it again.",
            code="source_changed",
        )
        try:
            url = parse_openai_line(line, self.where).image_urls[self.index]
            data, _, _ = decode_data_uri(url, self.where, self.max_bytes)
        except (RequestError, IndexError):
            raise changed from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise changed
        return data


@dataclass(frozen=True, slots=True)  # slots: a prefix of 100,000 objects is kept in memory
class InputSpec:
    source: str  # exactly as the user gave it (or as found under a directory they gave)
    local_path: Path | None = None
    uri: str | None = None  # an object in a user's bucket, read in place (or a refused input's)
    prompt: str | None = None
    custom_id: str | None = None
    size: int | None = None  # bytes, from stat or the listing: known before anything is read
    version: str | None = None  # a local file's mtime (ns), an object's ETag
    # The manifest line's other fields, for the job's kind to read (e.g. "questions"), and
    # where the line is, for its error messages.
    extra: Mapping[str, Any] = field(default_factory=dict)
    where: str | None = None
    # An input given inline (an OpenAI line's data: URI): checked when its line is read, then
    # read again from the file when it is stored, content-addressed; never held meanwhile.
    inline: InlineImage | None = None
    suffix: str = ""  # of the stored blob, for ``inline``
    model: str | None = None  # the model an OpenAI-Batch line names
    # (code, message): an input refused on its own (empty, over the byte limit, a URL never
    # fetched): nothing of it is read or stored, its item is written failed with it, and the
    # rest of the job runs.
    input_error: tuple[str, str] | None = None
    # The request's other images, in order, after this one (an OpenAI line of several): each
    # checked and stored as this one is; written to ``item_inputs``.
    others: tuple[InputSpec, ...] = ()


# ``items.source`` and ``items.input_uri`` of an item with no input: an OpenAI request of text
# alone. Nothing is stored or read for it.
NO_INPUT = ""

# The key of ``items.request`` that holds an input refused on its own: {"code", "message"}.
INPUT_ERROR = "input_error"


# The key of ``items.request`` that holds an item's other images, after its first
# (``input_uri``): their URIs, in order. ``item_inputs`` holds them too, for blob collection.
MORE_IMAGES = "more_images"


def read_more_images(request: Mapping[str, Any] | None) -> list[str]:
    """The URIs of an item's images after its first, in order (none for one image or none)."""
    more = (request or {}).get(MORE_IMAGES)
    return [str(uri) for uri in more] if isinstance(more, list) else []


def read_input_error(request: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The (code, message) an item's input was refused with at submit, if it was."""
    refused = (request or {}).get(INPUT_ERROR)
    if not isinstance(refused, dict):
        return None
    return str(refused.get("code")), str(refused.get("message"))


@dataclass(frozen=True)
class _Walk:
    """What every step of one expansion shares."""

    blobs: Blobs
    extensions: frozenset[str]
    max_input_bytes: int
    manifests: tuple[Path, ...] = ()  # resolved manifests being read, outermost first
    batch_format: BatchFormat | None = None  # ``submit batch``: how its .jsonl file is read
    policy: InputPolicy = ANYTHING  # what an input may name (LLAVA_BATCH_INPUT_PREFIXES)


def expand_sources(
    sources: Sequence[str],
    *,
    blobs: Blobs,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    batch_format: BatchFormat | None = None,
    policy: InputPolicy = ANYTHING,
) -> list[InputSpec]:
    """Every input the sources name; a request-level problem refuses the request, while an
    input that is empty or over ``max_input_bytes`` only carries its ``input_error``.

    ``batch_format`` (``submit batch``): each source is a .jsonl file of chat requests, in
    OpenAI-Batch format or ours, named or detected from its lines."""
    return list(
        iter_sources(
            sources,
            blobs=blobs,
            extensions=extensions,
            max_input_bytes=max_input_bytes,
            batch_format=batch_format,
            policy=policy,
        )
    )


def iter_sources(
    sources: Sequence[str],
    *,
    blobs: Blobs,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    batch_format: BatchFormat | None = None,
    policy: InputPolicy = ANYTHING,
) -> Iterator[InputSpec]:
    """``expand_sources`` one input at a time, so a million-line manifest or a huge prefix is
    never held in memory here. Its refusals (a duplicate id, no inputs at all) come once the
    sources are exhausted, as ``expand_sources``'s do: a caller writes nothing before that.

    ``policy``: a source outside it refuses the request before anything is listed; an input a
    file names outside it becomes an item that fails ``input_not_allowed`` on its own."""
    walk = _Walk(blobs, extensions, max_input_bytes, batch_format=batch_format, policy=policy)
    found = False
    seen: set[str] = set()
    duplicate: InputSpec | None = None
    for source in sources:
        if batch_format is not None and (
            is_s3_uri(source) or not source.lower().endswith(".jsonl")
        ):
            raise RequestError(
                f"{printable(source)}: a batch is a local .jsonl file.", code="invalid_source"
            )
        _check_source_text(source)
        policy.check_source(source)
        for spec in _expand_one(source, walk):
            found = True
            if spec.custom_id is not None and duplicate is None:
                if spec.custom_id in seen:
                    duplicate = spec
                seen.add(spec.custom_id)
            yield spec
    if not found:
        raise RequestError("No input files were found in the given sources.", code="no_inputs")
    if duplicate is not None:
        raise RequestError(
            f"{duplicate.where or duplicate.source}: the custom id {duplicate.custom_id!r} "
            "appears more than once.",
            code="duplicate_id",
        )


def _expand_one(source: str, walk: _Walk) -> Iterator[InputSpec]:
    _check_source_text(source)
    if is_s3_uri(source):
        yield from _expand_s3(source, walk)
        return
    path = Path(source)
    if not path.exists():
        raise RequestError(f"{source}: no such file or directory.", code="source_not_found")
    if path.is_dir():
        yield from _expand_directory(source, walk)
    elif path.suffix.lower() == ".jsonl":
        yield from _read_manifest(path, walk)
    else:
        yield _local_file(source, path, walk)


def _check_source_text(source: str) -> None:
    # Sources end up in the database as they are: NUL and undecodable bytes (a file name that is
    # not UTF-8 arrives as lone surrogates) would fail the insert after the blobs were stored.
    if "\x00" in source:
        raise RequestError("A source contains a NUL byte.", code="invalid_source")
    if not is_utf8(source):
        raise RequestError(
            f"{printable(source)}: the name is not valid UTF-8; rename it.", code="invalid_source"
        )


def _local_file(source: str, path: Path, walk: _Walk) -> InputSpec:
    """A local input, checked from its stat size: nothing is read here."""
    try:
        info = path.stat()
    except OSError as exc:
        raise RequestError(
            f"{source}: cannot be read ({exc.strerror}).", code="source_unreadable"
        ) from exc
    if not stat.S_ISREG(info.st_mode):  # a device, FIFO or socket could be endless
        raise RequestError(f"{source}: not a regular file.", code="invalid_source")
    # An empty or oversized file is one bad input, not a bad request: it becomes an item that
    # is written failed, and is never read or stored (``uri`` is what its row records).
    refused = _size_error(source, info.st_size, walk.max_input_bytes, what="file")
    return InputSpec(
        source=source,
        local_path=path,
        uri=str(path) if refused else None,
        size=info.st_size,
        version=str(info.st_mtime_ns),
        input_error=refused,
    )


def _size_error(
    source: str, size: int, limit: int, *, what: str = "object"
) -> tuple[str, str] | None:
    """The (code, message) an input of ``size`` bytes fails its own item with, if any: judged
    from its stat size or its listing, before anything is read."""
    if size == 0:
        return "empty_input", f"{source}: the {what} is empty (0 bytes)."
    if size > limit:
        return (
            "input_too_large",
            f"{source}: {size} bytes is over the input limit of {limit} bytes "
            "(LLAVA_BATCH_MAX_INPUT_BYTES).",
        )
    return None


def _expand_s3(uri: str, walk: _Walk) -> Iterator[InputSpec]:
    try:
        parse_s3_uri(uri)
        found = False
        for obj in walk.blobs.list_uri(uri):
            # A prefix lists everything under it; only images are inputs. An exact key is an
            # input whatever its name (but not a "folder/" marker).
            exact = obj.uri == uri and not obj.key.endswith("/")
            if exact or Path(obj.key).suffix.lower() in walk.extensions:
                found = True
                # Judged from the listing's size before any cost is paid: an empty object or
                # one over the limit fails only its own item.
                yield InputSpec(
                    source=obj.uri,
                    uri=obj.uri,
                    size=obj.size,
                    version=obj.etag,
                    input_error=_size_error(obj.uri, obj.size, walk.max_input_bytes),
                )
    except StorageError as exc:
        raise RequestError(f"{uri}: {exc}", code=exc.code) from exc
    if not found:
        raise RequestError(f"{uri}: no image objects under this prefix.", code="no_inputs")


def _expand_directory(source: str, walk: _Walk) -> Iterator[InputSpec]:
    root = Path(source).resolve()
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in walk.extensions:
                continue
            _check_source_text(str(path))
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise RequestError(
                    f"{path}: symbolic link points outside {source}; refusing to read it.",
                    code="symlink_escape",
                )
            yield _local_file(str(path), path, walk)


def _manifest_lines(manifest: Path) -> Generator[_Line, None, None]:
    """The lines of a manifest, read as they are used (a million lines are never all in
    memory), each with where it starts in the file, in bytes."""
    try:
        with manifest.open("rb") as f:
            offset = 0
            for raw in f:
                yield _Line(offset, len(raw), raw.decode("utf-8").rstrip("\r\n"))
                offset += len(raw)
    except UnicodeDecodeError as exc:
        raise RequestError(f"{manifest}: not valid UTF-8.", code="manifest_invalid") from exc


@dataclass(frozen=True, slots=True)
class _Line:
    offset: int  # in bytes, from the start of the file
    length: int  # in bytes, its line break included
    text: str  # without its line break


def _first_line(manifest: Path) -> list[str]:
    """The first non-blank line of a manifest, if any: what ``detect_openai`` judges it by."""
    lines = _manifest_lines(manifest)
    try:
        return [next(line.text for line in lines if line.text.strip())]
    except StopIteration:
        return []
    finally:
        lines.close()


def _read_manifest(manifest: Path, walk: _Walk) -> Iterator[InputSpec]:
    inner = replace(walk, manifests=(*walk.manifests, manifest.resolve()), batch_format=None)
    openai = walk.batch_format == BatchFormat.openai
    if openai or (walk.batch_format == BatchFormat.auto and detect_openai(_first_line(manifest))):
        yield from _read_openai_batch(manifest, _manifest_lines(manifest), inner)
        return
    for number, line in enumerate(_manifest_lines(manifest), start=1):
        if not line.text.strip():
            continue
        where = f"{manifest}, line {number}"
        given, prompt, custom_id, extra = _parse_manifest_line(where, line.text)
        if is_s3_uri(given) and not walk.policy.allows_s3(given):
            # Refused on its own and never listed: its line becomes one failed item.
            yield _not_allowed(
                given, walk.policy, prompt=prompt, custom_id=custom_id, extra=extra, where=where
            )
            continue
        target = given if is_s3_uri(given) else _manifest_target(manifest, given, where, inner)
        for spec in _expand_one(target, inner):
            yield replace(
                spec,
                source=given if spec.source == target else spec.source,
                prompt=prompt,
                custom_id=custom_id,
                extra=extra,
                where=where,
            )


def _read_openai_batch(manifest: Path, lines: Iterable[_Line], walk: _Walk) -> Iterator[InputSpec]:
    """Each request of an OpenAI-Batch file as one chat input; every line names one model."""
    model: str | None = None
    for number, line in enumerate(lines, start=1):
        if not line.text.strip():
            continue
        where = f"{manifest}, line {number}"
        parsed = parse_openai_line(line.text, where)
        if model is None:
            model = parsed.model
        elif parsed.model != model:
            raise RequestError(
                f"{where}: the model {printable(parsed.model)!r} is not {printable(model)!r}, "
                "the model of the lines before: one file, one model (one job).",
                code="model_mismatch",
            )
        with _located(where):
            spec = _openai_inputs(manifest, line, parsed.image_urls, where, walk)
        yield replace(
            spec, custom_id=parsed.custom_id, model=model, extra=parsed.request, where=where
        )


def _openai_inputs(
    manifest: Path, line: _Line, urls: Sequence[str], where: str, walk: _Walk
) -> InputSpec:
    """The inputs of one OpenAI line: its first image, the others in ``InputSpec.others``. A
    request over ``MAX_IMAGES_PER_REQUEST`` fails its own item, nothing of it read; so does
    one whose other image is refused on its own (the first such refusal is the item's)."""
    if len(urls) > MAX_IMAGES_PER_REQUEST:
        message = (
            f"{where}: the request carries {len(urls)} images, over the limit of "
            f"{MAX_IMAGES_PER_REQUEST} per request."
        )
        shown = _shown(urls[0])
        return InputSpec(source=shown, uri=shown, input_error=(TOO_MANY_IMAGES, message))
    first = _openai_input(manifest, line, urls[0] if urls else NO_IMAGE, where, walk)
    others = tuple(
        _openai_input(manifest, line, url, where, walk, index=index)
        for index, url in enumerate(urls[1:], start=1)
    )
    refused = next((o.input_error for o in (first, *others) if o.input_error), None)
    if refused is not None:
        return replace(first, uri=first.uri or first.source, input_error=refused, inline=None)
    return replace(first, others=others)


def refuse_images_over(
    inputs: Iterable[InputSpec], takes: Callable[[], int | None], model: str
) -> Iterator[InputSpec]:
    """``inputs``, a request of more images than its model takes (``takes()``, asked once, at
    the first request of several; None: any number) refused on its own
    (``images_not_supported``): its item is written failed, nothing of it stored or read."""
    asked, limit = False, None
    for spec in inputs:
        count = 1 + len(spec.others)
        if count > 1 and spec.input_error is None and not asked:
            asked, limit = True, takes()
        if count == 1 or spec.input_error is not None or limit is None or count <= limit:
            yield spec
            continue
        message = f"{spec.where}: {images_refusal(count, model, limit)}"
        yield replace(
            spec,
            uri=spec.uri or spec.source,
            inline=None,
            others=(),
            input_error=(IMAGES_NOT_SUPPORTED, message),
        )


def _shown(url: str) -> str:
    """How an image URL is recorded as an item's ``source``: a data: URI only by its start."""
    return f"{url[:40]}…" if uri_scheme(url) == "data" else url


_ITEM_SIZE_ERRORS = ("empty_input", "input_too_large")


def _openai_input(
    manifest: Path, line: _Line, url: str, where: str, walk: _Walk, *, index: int = 0
) -> InputSpec:
    """The input an OpenAI line's image_url names: a data: URI (stored like a local file), an
    s3:// object (read in place), or a path in the file's folder; any other scheme is never
    fetched and fails its own item. A request of text alone has no input (``NO_INPUT``)."""
    if url == NO_IMAGE:
        return InputSpec(source=NO_INPUT, uri=NO_INPUT)
    _check_source_text(url)
    scheme = uri_scheme(url)
    if scheme == "data":
        try:
            data, suffix, mime = decode_data_uri(url, where, walk.max_input_bytes)
        except RequestError as exc:
            if exc.code not in _ITEM_SIZE_ERRORS:  # a malformed line refuses the file
                raise
            # Empty or over the byte limit: like a listed file, it fails only its own item.
            return InputSpec(source=_shown(url), input_error=(exc.code, str(exc)))
        digest = hashlib.sha256(data).hexdigest()
        inline = InlineImage(
            manifest, line.offset, line.length, where, digest, walk.max_input_bytes, index
        )
        return InputSpec(
            source=f"data:{mime};base64,... ({len(data)} bytes)",
            inline=inline,
            suffix=suffix,
            size=len(data),
            version=digest,
        )
    if scheme == "s3":
        if not walk.policy.allows_s3(url):
            return _not_allowed(url, walk.policy)
        return _s3_object(url, walk)
    if scheme is not None:
        message = (
            f"{url[:200]}: {scheme}: URLs are never fetched (workers do not read inputs from the "
            "network); give the image as a data: URI, an s3:// URI or a file next to the batch "
            "file."
        )
        return InputSpec(source=url, uri=url, input_error=("input_scheme_not_allowed", message))
    path = Path(_manifest_target(manifest, url, where, walk))
    if not path.exists():
        raise RequestError(f"{url}: no such file.", code="source_not_found")
    if path.is_dir() or path.suffix.lower() == ".jsonl":
        raise RequestError(f"{url}: an image_url names one image file.", code="manifest_invalid")
    return _local_file(url, path, walk)


def _not_allowed(uri: str, policy: InputPolicy, **fields: Any) -> InputSpec:
    """An ``s3://`` input a file names outside ``LLAVA_BATCH_INPUT_PREFIXES``: an item that fails
    ``input_not_allowed`` when claimed, without anything being listed or read."""
    return InputSpec(
        source=uri, uri=uri, input_error=(INPUT_NOT_ALLOWED, policy.refusal(uri)), **fields
    )


def _s3_object(uri: str, walk: _Walk) -> InputSpec:
    """The one object ``uri`` names (not a prefix), checked from its listing."""
    try:
        _, key = parse_s3_uri(uri)
        if not key or key.endswith("/"):
            raise RequestError(f"{uri}: names a prefix, not one image.", code="manifest_invalid")
        # Keys list in order, so the key itself comes before any other key it is a prefix of.
        found = next(iter(walk.blobs.list_uri(uri)), None)
    except StorageError as exc:
        raise RequestError(f"{uri}: {exc}", code=exc.code) from exc
    if found is None or found.key != key:
        raise RequestError(f"{uri}: no such object.", code="source_not_found")
    return InputSpec(
        source=uri,
        uri=uri,
        size=found.size,
        version=found.etag,
        input_error=_size_error(uri, found.size, walk.max_input_bytes),
    )


@contextmanager
def _located(where: str) -> Iterator[None]:
    """Refusals raised inside name the line they come from."""
    try:
        yield
    except RequestError as exc:
        if exc.message.startswith(where):
            raise
        raise RequestError(f"{where}: {exc.message}", code=exc.code) from None


def _manifest_target(manifest: Path, given: str, where: str, walk: _Walk) -> str:
    """The local path a manifest entry names; it must resolve inside the manifest's folder (the
    rule of ``symlink_escape``), so a manifest cannot make us read ``/etc/passwd``."""
    if not given.strip():
        raise RequestError(f'{where}: "input" is empty.', code="manifest_invalid")
    _check_source_text(given)
    path = manifest.parent / given  # an absolute ``given`` stays itself
    folder = manifest.parent.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        raise RequestError(
            f"{where}: {given} is outside the manifest's folder {folder}; a manifest may only "
            "name files in its folder or below it.",
            code="manifest_escape",
        )
    if resolved in walk.manifests:
        raise RequestError(
            f"{where}: {given} is a manifest already being read: manifests include each "
            "other in a loop.",
            code="manifest_invalid",
        )
    if path.suffix.lower() == ".jsonl" and len(walk.manifests) >= MAX_MANIFEST_NESTING:
        raise RequestError(
            f"{where}: {given} is one manifest too many: a manifest may name a manifest "
            f"(naming a manifest…) at most {MAX_MANIFEST_NESTING} deep.",
            code="manifest_invalid",
        )
    return str(path)


def _parse_manifest_line(
    where: str, line: str
) -> tuple[str, str | None, str | None, dict[str, Any]]:
    """Returns (input, prompt, custom id, the other fields) of one manifest line."""
    try:
        entry = loads_bounded(line, MAX_LINE_NESTING)
    except NestingError as exc:
        raise RequestError(
            f"{where}: the line is not supported: {exc}.", code="manifest_invalid"
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"{where}: not valid JSON ({exc.msg}).", code="manifest_invalid"
        ) from exc
    if looks_like_openai(entry):
        raise RequestError(
            f"{where}: an OpenAI-Batch request, not a manifest line: submit the file with "
            "`llava-batch submit batch`.",
            code="manifest_invalid",
        )
    if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
        raise RequestError(
            f'{where}: expected an object with a string "input" field.', code="manifest_invalid"
        )
    if "prompt" in entry and not isinstance(entry["prompt"], str):
        raise RequestError(f'{where}: "prompt" must be a string.', code="manifest_invalid")
    for key in ("id", "custom_id"):  # custom_id, as OpenAI names it, is an alias of id
        if key in entry and not isinstance(entry[key], str | int):
            raise RequestError(f'{where}: "{key}" must be a string.', code="manifest_invalid")
    if "id" in entry and "custom_id" in entry and str(entry["id"]) != str(entry["custom_id"]):
        raise RequestError(
            f'{where}: "id" and "custom_id" name the same thing; give one.',
            code="manifest_invalid",
        )
    custom_id = entry.get("id", entry.get("custom_id"))
    if custom_id is not None:
        custom_id = str(custom_id)
        check_text(
            custom_id,
            what=f'{where}: "id"',
            code="invalid_custom_id",
            max_chars=MAX_CUSTOM_ID_CHARS,
        )
    extra = {k: v for k, v in entry.items() if k not in ("input", "prompt", "id", "custom_id")}
    return entry["input"], entry.get("prompt"), custom_id, extra
