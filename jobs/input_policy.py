"""What a user's input may name: ``LLAVA_BATCH_INPUT_PREFIXES``.

An ``s3://`` input is read in place with the deployment's credentials (listed at submit, read
by the workers), so in a shared deployment a user who may name any bucket those credentials
reach may read what they were never given, other users' stored inputs included. The setting
lists the ``s3://bucket/prefix/`` a user may name, and optionally local folders:

- unset (the default), anything is allowed, as before it existed;
- set, an ``s3://`` input must lie under one of its ``s3://`` entries (none listed: no S3
  input at all), and a local input under one of its folders when it lists any. Local files are
  read with the permissions of whoever submits them, so only a list that names folders bounds
  them (for a schedule's folder, which the scheduler reads, that matters).

A source given on the command line (or a schedule's source) outside the list refuses the
request, before anything is listed. An input named inside a file (a manifest line, an OpenAI
request's image) outside it becomes an item that fails ``input_not_allowed`` on its own. The
deployment's own store (``LLAVA_BATCH_STORAGE_URL``) stays readable by the workers for what a
submit stored there, whatever the list says; a user who names it is held to the list like any
other input (``allows_read``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.errors import ItemErrorCode, RequestError
from storage import InvalidUriError, is_s3_uri, parse_s3_uri, uri_scheme

INPUT_NOT_ALLOWED = ItemErrorCode.input_not_allowed.value
SETTING = "LLAVA_BATCH_INPUT_PREFIXES"


def parse_entries(value: object) -> tuple[str, ...]:
    """The setting's entries, from a comma- or whitespace-separated string (or a list), each
    checked and normalised: ``s3://bucket/prefix/`` with its trailing slash (a prefix names a
    folder: ``s3://b/in`` must not admit ``s3://b/inbox/``), or an absolute local folder."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts: Iterable[object] = value.replace(",", " ").split()
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise ValueError("give s3://bucket/prefix/ entries or folders, separated by commas")
    return tuple(_entry(part) for part in parts)


def _entry(part: object) -> str:
    if not isinstance(part, str) or not part.strip():
        raise ValueError(f"{part!r} is not an s3://bucket/prefix/ or a folder")
    part = part.strip()
    if is_s3_uri(part):
        try:
            bucket, key = parse_s3_uri(part)
        except InvalidUriError as exc:
            raise ValueError(str(exc)) from None
        key = key.strip("/")
        return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"
    if uri_scheme(part) is not None or not part.startswith("/"):
        raise ValueError(f"{part!r} is neither an s3://bucket/prefix/ nor an absolute folder")
    return str(Path(part).resolve())


@dataclass(frozen=True)
class InputPolicy:
    """The parsed setting; ``InputPolicy()`` allows everything."""

    entries: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Sequence[str]) -> InputPolicy:
        return cls(parse_entries(list(entries)))

    @property
    def restricted(self) -> bool:
        return bool(self.entries)

    @property
    def _prefixes(self) -> tuple[str, ...]:
        return tuple(e for e in self.entries if is_s3_uri(e))

    @property
    def _folders(self) -> tuple[Path, ...]:
        return tuple(Path(e) for e in self.entries if not is_s3_uri(e))

    def allows_s3(self, uri: str) -> bool:
        """Whether a user may name ``uri``, an ``s3://`` object or prefix. S3 prefixes are
        plain string prefixes, so this is exactly "every key it can list is under an entry"."""
        if not self.restricted:
            return True
        normal = "s3://" + uri[len("s3://") :]  # the scheme in any case
        return any(normal.startswith(prefix) for prefix in self._prefixes)

    def allows_local(self, path: Path) -> bool:
        """Whether a user may name the local file or folder ``path`` (symbolic links followed)."""
        folders = self._folders
        if not folders:
            return True
        resolved = path.resolve()
        return any(resolved.is_relative_to(folder) for folder in folders)

    def allows(self, source: str) -> bool:
        """``allows_s3`` or ``allows_local``, whichever ``source`` is."""
        return self.allows_s3(source) if is_s3_uri(source) else self.allows_local(Path(source))

    def refusal(self, source: str) -> str:
        """Why ``source`` is refused: one sentence naming what is allowed."""
        return (
            f"{source[:300]}: not an allowed input; {SETTING} allows only inputs under "
            f"{', '.join(self.entries)}."
        )

    def check_source(self, source: str) -> None:
        """Refuses a source given on the command line (or a schedule's), before it is listed."""
        if not self.allows(source):
            raise RequestError(self.refusal(source), code=INPUT_NOT_ALLOWED)

    def allows_read(self, source: str, input_uri: str, stored_here: bool) -> bool:
        """Whether a worker may read an item's input: one a submit stored in the deployment's
        own store (``stored_here``; its source is then a file name or ``data:…``, never the
        store's URI) always; an ``s3://`` object read in place (its source is its URI: a user
        named it) only under the list. The check at submit is the user's side's; this one is
        the deployment's, where the credentials are used."""
        if not self.restricted or not is_s3_uri(input_uri):
            return True  # local reads never leave the store (storage.Blobs)
        if source != input_uri and stored_here:
            return True
        return self.allows_s3(input_uri)


# The default: no list, anything the credentials can read.
ANYTHING = InputPolicy()
