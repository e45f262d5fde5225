"""Make model output storable in every database we support.

PostgreSQL ``text`` and ``jsonb`` refuse the NUL character (U+0000), which byte-fallback tokens
can decode to; lone surrogates cannot be encoded as UTF-8 at all. Both are removed from results
(documented in docs/guarantees.md): a caption or a JSON value never needs them.
"""

from __future__ import annotations

from typing import Any, overload


@overload
def storable_text(text: str) -> str: ...
@overload
def storable_text(text: None) -> None: ...
def storable_text(text: str | None) -> str | None:
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "ignore").decode("utf-8")
    return text


def storable_json(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value
