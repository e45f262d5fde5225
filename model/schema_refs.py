"""Internal ``$ref``s of a user's JSON Schema, inlined: one self-contained tree to bound and read.

pydantic's ``Model.model_json_schema()`` puts nested models in ``$defs`` and points at them with
``{"$ref": "#/$defs/Address"}``. Inlining them gives every later step (the bounds, the prompt,
the token budget, page merging) a plain tree. Only references inside the document (``#/…``
JSON pointers) are followed; a recursive reference cannot be bounded for decoding and is
refused, like an external one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from model.errors import SchemaError
from model.nesting import NestingError, check_nesting

__all__ = ["MAX_SCHEMA_NESTING", "MAX_SUBSCHEMAS", "check_schema_nesting", "resolve_refs"]

# The expanded tree's size limit: a definition used many times is copied each time.
MAX_SUBSCHEMAS = 2000
# How deep a schema may nest, in JSON levels as written and in subschemas once its $refs are
# followed (each hop counted). Far above what a supported schema needs (eight levels of fields,
# ``model.schema.MAX_DEPTH``, are about 16 to 32 JSON levels), far below where jsonschema's
# recursion, about ten frames a level, would exhaust Python's stack.
MAX_SCHEMA_NESTING = 64
# Where definitions live; dropped from the root once inlined.
_DEFINITIONS = ("$defs", "definitions")
# What may stand next to a "$ref" (pydantic adds a field's description there).
_REF_SIBLINGS = {"description", "title", "examples", "default", "$comment"}
# Keywords whose value is one subschema, a map of them, or a list of them.
_ONE, _MAP, _LIST = ("items",), ("properties",), ("anyOf",)


def resolve_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with every internal ``$ref`` replaced by what it points at.

    ``$defs`` / ``definitions`` (and ``$id``) are dropped from the root; annotations next to a
    ``$ref`` (description, title, …) override the target's. Only subschemas under
    ``properties``, ``items`` and ``anyOf`` are followed: anything else is refused later by
    ``prepare_schema``. Raises ``SchemaError`` for an external, dangling or recursive ``$ref``,
    a ``$ref`` next to other keywords, or a tree over ``MAX_SUBSCHEMAS`` once expanded.
    """
    check_schema_nesting(schema)
    root = dict(schema)
    root.pop("$id", None)
    defined = {key: root.pop(key) for key in _DEFINITIONS if key in root}
    return _Resolver({**root, **defined}).resolve(root, "$", (), 0)


def check_schema_nesting(schema: Mapping[str, Any]) -> None:
    """``SchemaError`` for a schema nested deeper than ``MAX_SCHEMA_NESTING`` JSON levels: it
    is refused before anything recurses through it."""
    try:
        check_nesting(schema, MAX_SCHEMA_NESTING)
    except NestingError as exc:
        raise SchemaError(f"The schema is not supported: {exc}.") from None


class _Resolver:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.count = 0

    def resolve(
        self, node: Mapping[str, Any], where: str, stack: tuple[str, ...], depth: int
    ) -> dict[str, Any]:
        """``node`` with its $refs inlined; ``depth``: the subschemas and $ref hops above it."""
        self.count += 1
        if self.count > MAX_SUBSCHEMAS:
            raise SchemaError(
                f"The schema is too large once its $refs are expanded "
                f"(over {MAX_SUBSCHEMAS} subschemas)."
            )
        # A chain of $refs (each pointing at the next) is flat as JSON but deep here.
        if depth > MAX_SCHEMA_NESTING:
            raise SchemaError(
                f"The schema nests deeper than {MAX_SCHEMA_NESTING} subschemas once its $refs "
                f"are followed, at {where}."
            )
        if "$ref" in node:
            return self._inline(node, where, stack, depth)
        out = dict(node)
        for key in _ONE:
            if isinstance(out.get(key), Mapping):
                out[key] = self.resolve(out[key], f"{where}[]", stack, depth + 1)
        for key in _MAP:
            if isinstance(out.get(key), Mapping):
                out[key] = {
                    name: self.resolve(sub, f"{where}.{name}", stack, depth + 1)
                    if isinstance(sub, Mapping)
                    else sub
                    for name, sub in out[key].items()
                }
        for key in _LIST:
            if isinstance(out.get(key), list):
                out[key] = [
                    self.resolve(sub, f"{where}.{key}[{i}]", stack, depth + 1)
                    if isinstance(sub, Mapping)
                    else sub
                    for i, sub in enumerate(out[key])
                ]
        return out

    def _inline(
        self, node: Mapping[str, Any], where: str, stack: tuple[str, ...], depth: int
    ) -> dict[str, Any]:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(
                f"Only references inside the schema (#/$defs/…) are supported, not {ref!r}, "
                f"at {where}."
            )
        others = sorted(set(node) - _REF_SIBLINGS - {"$ref"})
        if others:
            raise SchemaError(
                f'A "$ref" may only stand next to annotations (description, title), '
                f"not {others[0]!r}, at {where}."
            )
        if ref in stack or ref in ("#", "#/"):
            raise SchemaError(
                f"The $ref {ref!r} at {where} makes the schema recursive; recursive schemas "
                "cannot be bounded for decoding."
            )
        target = self._lookup(ref, where)
        resolved = self.resolve(target, where, (*stack, ref), depth + 1)
        resolved.update({key: value for key, value in node.items() if key != "$ref"})
        return resolved

    def _lookup(self, ref: str, where: str) -> Mapping[str, Any]:
        node: Any = self.document
        for part in ref[1:].lstrip("/").split("/"):
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                node = None
                break
        if not isinstance(node, Mapping):
            raise SchemaError(f"The $ref {ref!r} at {where} points at no schema in the document.")
        return node
