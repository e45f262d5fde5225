"""The extraction prompt: the schema's fields, in words, for the model to fill."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from model.schema_refs import resolve_refs

__all__ = ["build_extraction_prompt"]


def build_extraction_prompt(schema: Mapping[str, Any], instructions: str | None = None) -> str:
    """The instruction text for one extraction: the fields to fill, then the user's instructions.

    Lists every property (nested ones indented, ``$ref``s followed) with its type, whether it
    is required, its allowed values or pattern and its description, and asks for one JSON
    object only. Raises ``SchemaError`` for a ``$ref`` that ``resolve_refs`` refuses.
    """
    lines = [
        "Extract information from this document image as one JSON object with these fields:",
        *_describe_properties(resolve_refs(schema), 0),
    ]
    if instructions and instructions.strip():
        lines += ["", f"Instructions: {instructions.strip()}"]
    lines += [
        "",
        "Use null for a field that is not in the document, if null is allowed. "
        "Answer with the JSON object only, no other text.",
    ]
    return "\n".join(lines)


def _describe_properties(node: Mapping[str, Any], indent: int) -> list[str]:
    required = set(node.get("required", []))
    lines: list[str] = []
    for name, sub in node.get("properties", {}).items():
        lines.append("  " * indent + f"- {name}: {_describe(sub, name in required)}")
        lines += _describe_children(sub, indent + 1)
    return lines


def _describe_children(sub: Mapping[str, Any], indent: int) -> list[str]:
    if "properties" in sub:
        return _describe_properties(sub, indent)
    items = sub.get("items")
    if isinstance(items, Mapping) and "properties" in items:
        return _describe_properties(items, indent)
    for branch in sub.get("anyOf", []):  # the first branch with fields of its own
        lines = _describe_children(branch, indent) if isinstance(branch, Mapping) else []
        if lines:
            return lines
    return []


def _describe(sub: Mapping[str, Any], required: bool) -> str:
    text = f"{_kind_text(sub)}, {'required' if required else 'optional'}"
    description = sub.get("description")
    if isinstance(description, str) and description.strip():
        text += f" — {description.strip()}"
    return text


def _kind_text(sub: Mapping[str, Any]) -> str:
    """``string``, ``string, one of "a", "b"``, ``string matching ^…$``, ``number or null``."""
    if "anyOf" in sub:
        branches = [b for b in sub["anyOf"] if isinstance(b, Mapping)]
        return " or ".join(dict.fromkeys(_kind_text(b) for b in branches)) or "value"
    kind = _type_text(sub) if "type" in sub else "value"
    values = sub.get("enum", [sub["const"]] if "const" in sub else None)
    if isinstance(values, list):
        kind = f"{kind}, one of " + ", ".join(json.dumps(v) for v in values)
    elif isinstance(sub.get("pattern"), str):
        kind = f"{kind} matching {sub['pattern']}"
    return kind


def _type_text(sub: Mapping[str, Any]) -> str:
    if "anyOf" in sub:
        return _kind_text(sub)
    raw = sub.get("type", "value")
    types = [raw] if isinstance(raw, str) else list(raw)
    words = []
    for name in types:
        if name == "string" and sub.get("format") == "date":
            words.append("date (YYYY-MM-DD)")
        elif name == "array":
            items = sub.get("items", {})
            words.append(f"list of {_type_text(items) if isinstance(items, Mapping) else 'value'}")
        else:
            words.append(name)
    return " or ".join(words)
