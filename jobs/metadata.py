"""Job metadata: key/value labels a user puts on a job (``--meta key=value``), bounded like a
hosted batch API's metadata, stored in ``jobs.metadata`` and matched by ``jobs --meta``.

Submit commands parse their ``--meta`` options with ``parse_meta`` and hand the dict to
``SubmitRequest.of(metadata=…)``; ``jobs.submit.check_request`` checks it again
(``check_metadata``) for callers that build a request themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobs.errors import RequestError
from jobs.limits import is_utf8, printable

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
CODE = "invalid_metadata"


def parse_meta(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """``["team=search", "run=7"]`` → ``{"team": "search", "run": "7"}`` (None for none).

    Each pair is split at its first ``=``; a pair without one, an empty key or a key given
    twice is refused (``invalid_metadata``), and so is anything over the bounds."""
    if not pairs:
        return None
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RequestError(f"--meta {printable(pair)[:80]!r} is not KEY=VALUE.", code=CODE)
        if key in found:
            raise RequestError(f"--meta key {printable(key)[:80]!r} is given twice.", code=CODE)
        found[key] = value
    check_metadata(found)
    return found


def check_metadata(metadata: Mapping[str, str]) -> None:
    """At most 16 pairs; keys of 1 to 64 characters, values up to 512; UTF-8 text without NUL."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise RequestError(
            f"metadata has {len(metadata)} pairs; the limit is {MAX_METADATA_PAIRS}.", code=CODE
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise RequestError("metadata keys and values must be strings.", code=CODE)
        shown = printable(key)[:80]
        if not key:
            raise RequestError("a metadata key is empty.", code=CODE)
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise RequestError(
                f"metadata key {shown!r} has {len(key)} characters; the limit is "
                f"{MAX_METADATA_KEY_CHARS}.",
                code=CODE,
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise RequestError(
                f"metadata value of {shown!r} has {len(value)} characters; the limit is "
                f"{MAX_METADATA_VALUE_CHARS}.",
                code=CODE,
            )
        for text in (key, value):
            if "\x00" in text or not is_utf8(text):
                raise RequestError(
                    f"metadata {shown!r} is not valid UTF-8 text (or contains a NUL byte).",
                    code=CODE,
                )


def describe_metadata(metadata: Mapping[str, str] | None) -> str:
    """``team=search, run=7`` for people (empty when there is none)."""
    return ", ".join(f"{key}={value}" for key, value in (metadata or {}).items())
