"""Job kinds: one module each, registered here.

A kind is typed parameters (a pydantic model, validated at submit and decoded once at claim)
and one handler (``jobs.kinds.base.Kind``): check the request, say what each item asks, turn an
item into generation requests (conversations), and turn generations into the item's outcome.
Nothing outside a kind's module branches on the kind.

Adding a kind is its module (parameters, handler, and the options its commands take, declared
once as ``cli``: ``jobs.kinds.options``), one line in ``KINDS``, its error codes
(``jobs.errors``) and its page under ``docs/kinds/``. ``submit <kind>``, ``run <kind>`` and
``schedule add <kind>`` are generated from ``KINDS`` (``jobs.cli.kind_commands``).
"""

from __future__ import annotations

from typing import Any

from jobs.errors import RequestError
from jobs.kinds.ask import Ask, AskParams
from jobs.kinds.base import Conversation, ItemAsk, Kind, KindParams
from jobs.kinds.caption import Caption, CaptionParams
from jobs.kinds.chat import Chat, ChatParams
from jobs.kinds.extract import Extract, ExtractParams
from jobs.kinds.locate import Locate, LocateParams

__all__ = [
    "KINDS",
    "AskParams",
    "CaptionParams",
    "ChatParams",
    "Conversation",
    "ExtractParams",
    "ItemAsk",
    "Kind",
    "KindParams",
    "LocateParams",
    "decode_params",
    "get_kind",
]

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
