"""``KINDS``: every job kind's handler, by name. Importing it imports every kind (their pydantic
parameters); what only names a kind's commands reads ``jobs.kinds.commands`` instead."""

from __future__ import annotations

from typing import Any

from jobs.errors import RequestError
from jobs.kinds.ask import Ask
from jobs.kinds.base import Kind
from jobs.kinds.caption import Caption
from jobs.kinds.chat import Chat
from jobs.kinds.extract import Extract
from jobs.kinds.locate import Locate

KINDS: dict[str, Kind[Any]] = {
    kind.name: kind for kind in (Caption(), Extract(), Ask(), Chat(), Locate())
}


def get_kind(name: str) -> Kind[Any]:
    try:
        return KINDS[name]
    except KeyError:
        raise RequestError(
            f"Unknown job kind {name!r}; known: {', '.join(KINDS)}.", code="invalid_kind"
        ) from None


def decode_params(kind: Kind[Any], stored: dict[str, Any]) -> Any:
    """A job's parameters, typed, from its ``jobs.params`` row (decoded once per claim)."""
    return kind.params_type.model_validate(stored)
