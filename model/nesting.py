"""How deep a user's JSON may nest before the code that reads it recursively.

Python's JSON reader, jsonschema, and our own schema code all recurse once per level (or
several times: jsonschema spends about ten frames on each level of a schema), so a document
nested a few hundred levels deep would end in ``RecursionError`` somewhere downstream, an
internal error instead of a refusal. Whatever a user writes is measured here first, without
recursion, and refused above a depth that every legitimate request stays far below.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NestingError", "check_nesting", "loads_bounded", "nesting_depth"]


class NestingError(ValueError):
    """JSON nested deeper than allowed; ``str()`` is one sentence without a location."""


def nesting_depth(value: Any, *, stop_above: int | None = None) -> int:
    """The depth of ``value``: 0 for a scalar, 1 for a flat list or object, and so on. Walks
    without recursion; stops as soon as the depth passes ``stop_above``."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if stop_above is not None and deepest > stop_above:
            return deepest
        pending.extend((child, depth) for child in children)
    return deepest


def check_nesting(value: Any, limit: int) -> None:
    """``NestingError`` unless ``value`` nests at most ``limit`` levels deep."""
    if nesting_depth(value, stop_above=limit) > limit:
        raise NestingError(f"it nests deeper than {limit} levels")


def loads_bounded(text: str | bytes, limit: int) -> Any:
    """``json.loads(text)``, refused with ``NestingError`` when it nests deeper than ``limit``
    (also when it is so deep that the parser itself runs out of stack); ``JSONDecodeError``
    for text that is not JSON, as ``json.loads`` raises it."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise NestingError(f"it nests deeper than {limit} levels") from None
    check_nesting(value, limit)
    return value
