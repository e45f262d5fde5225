"""Limits a request is checked against at submit, each with one source of truth.

Per-job options are bounded like the settings that default them (``jobs/settings.py``); ids,
names and keys by the lengths written here, which the columns that store them take
(``jobs/db.py``). Both are checked in the request, so the database never has to refuse a value
after inputs were stored. The lengths live here, not in the table, so that the kinds (and the
CLI's ``--help`` that lists them) import no SQLAlchemy and no settings.
"""

from __future__ import annotations

from jobs.errors import RequestError
from model.schema_refs import MAX_SCHEMA_NESTING

# The lengths of the columns that store them (``jobs/db.py`` reads them from here).
MAX_CUSTOM_ID_CHARS = 500
MAX_NAME_CHARS = 200
MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_MODEL_CHARS = 500
# A priority is a small integer, higher first; the bounds keep it a rank, not a timestamp.
MIN_PRIORITY = -100
MAX_PRIORITY = 100
# How deep one line of a manifest or OpenAI-Batch file may nest (``model.nesting``): room for a
# schema as deep as a --schema file may be, inside the line's own levels (an OpenAI request's
# body, response_format, json_schema). Deeper lines are refused before anything recurses.
MAX_LINE_NESTING = MAX_SCHEMA_NESTING + 8
# How many manifests deep a manifest may name another (each level holds an open file).
MAX_MANIFEST_NESTING = 16


def setting_bounds(name: str) -> tuple[int, int]:
    """The (lowest, highest) value the setting ``name`` accepts."""
    from jobs.settings import Settings  # pydantic: only when a bound is checked

    low = high = None
    for constraint in Settings.model_fields[name].metadata:
        low = getattr(constraint, "ge", low)
        high = getattr(constraint, "le", high)
    assert isinstance(low, int) and isinstance(high, int), name
    return low, high


def check_option(option: str, value: int, setting: str) -> None:
    """A per-job option (``--batch-size``) stays within the bounds of its setting."""
    from jobs.settings import variable_of

    low, high = setting_bounds(setting)
    if not low <= value <= high:
        raise RequestError(
            f"{option} {value} is out of range: it must be between {low} and {high}, like "
            f"{variable_of(setting)}.",
            code="invalid_option",
        )


def is_utf8(text: str) -> bool:
    """False for text with lone surrogates: an undecodable byte in a file name or argument."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with undecodable bytes shown as ``\\xe9`` escapes, safe to print and store."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte decodes to, e.g. "\ud800" from JSON
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text(value: str, *, what: str, code: str, max_chars: int) -> None:
    """Text that every database stores as it is: UTF-8, no NUL, within its column."""
    if "\x00" in value:
        raise RequestError(f"{what} contains a NUL byte.", code=code)
    if not is_utf8(value):
        raise RequestError(f"{what} is not valid UTF-8 text: {printable(value)[:80]!r}.", code=code)
    if len(value) > max_chars:
        raise RequestError(
            f"{what} has {len(value)} characters; the limit is {max_chars}.", code=code
        )


def check_prompt(prompt: str, max_chars: int, *, where: str) -> None:
    if not prompt.strip():
        raise RequestError(f"{where}: the prompt is empty.", code="empty_prompt")
    if len(prompt) > max_chars:
        raise RequestError(
            f"{where}: the prompt has {len(prompt)} characters; the limit is {max_chars} "
            "(LLAVA_BATCH_MAX_PROMPT_CHARS).",
            code="prompt_too_long",
        )
    if "\x00" in prompt:
        raise RequestError(f"{where}: the prompt contains a NUL byte.", code="invalid_prompt")
    if not is_utf8(prompt):  # lone surrogates: undecodable bytes in an argument, or JSON escapes
        raise RequestError(f"{where}: the prompt is not valid UTF-8 text.", code="invalid_prompt")
