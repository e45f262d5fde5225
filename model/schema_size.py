"""The longest output a bounded schema allows, in characters, as the constrained decoder writes it.

The decoder (llguidance with ``model.constrained.DECODER_OPTIONS``) writes
``{"a": 1, "b": [1, 2]}``: ``": "`` after a key and ``", "`` between members and items, nothing
else. Counted at the maximum: every property present (optional ones too), strings at their
``maxLength`` (the decoder's free and patterned strings hold no character that needs an
escape: no ``"``, ``\\``, control character or DEL, so each character of a value is one
character of output) or at the longest match of their ``pattern``, arrays at ``maxItems``,
numbers with every integer digit their bounds allow plus the ``NUMBER_DECIMALS`` decimals the
decoder allows, the longest ``enum`` value (as ``json.dumps`` writes it), the longest ``anyOf``
branch or ``type`` in a list.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from model.patterns import pattern_max_length

__all__ = ["NUMBER_DECIMALS", "longest_output_chars"]

# The decoder writes at most this many digits after a number's decimal point (``model.constrained``
# gives every number ``multipleOf`` 10**-NUMBER_DECIMALS).
NUMBER_DECIMALS = 6


def longest_output_chars(bounded: Mapping[str, Any]) -> int:
    """The length of the longest JSON text the bounded schema (``prepare_schema``'s) allows."""
    if "anyOf" in bounded:
        return max(longest_output_chars(branch) for branch in bounded["anyOf"])
    if "enum" in bounded:
        return max(len(json.dumps(v, ensure_ascii=False)) for v in bounded["enum"])
    raw = bounded.get("type", [])
    types = [raw] if isinstance(raw, str) else list(raw)
    return max((_longest(bounded, kind) for kind in types), default=4)


def _longest(node: Mapping[str, Any], kind: str) -> int:
    if kind == "string":
        if "pattern" in node:
            return 2 + pattern_max_length(node["pattern"])
        return 2 + int(node["maxLength"])
    if kind in ("number", "integer"):
        bounds = [
            float(node[key])
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
            if key in node
        ]
        digits = len(str(math.ceil(max(abs(b) for b in bounds))))
        sign = 1 if min(bounds) < 0 else 0
        decimals = 1 + NUMBER_DECIMALS if kind == "number" else 0
        return sign + digits + decimals
    if kind == "boolean":
        return len("false")
    if kind == "null":
        return len("null")
    if kind == "array":
        count = int(node["maxItems"])
        return 2 + count * longest_output_chars(node["items"]) + 2 * max(count - 1, 0)
    if kind == "object":
        members = [
            len(json.dumps(name, ensure_ascii=False)) + 2 + longest_output_chars(sub)
            for name, sub in node["properties"].items()
        ]
        return 2 + sum(members) + 2 * max(len(members) - 1, 0)
    raise ValueError(f"not a JSON Schema type: {kind!r}")
