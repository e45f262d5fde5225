"""User JSON Schemas for extraction: check the supported subset, bound it for decoding, validate.

Light on purpose (jsonschema only, no torch, no xgrammar at import): the CLI refuses a bad schema
at submit with these functions. Three schemas are in play:

- the user's *original* schema, which results are validated against (``validate_output``);
- the *bounded* copy from ``prepare_schema``, which the engine turns into a grammar. A random (or
  confused) model left free would write strings, arrays and numbers forever and run to
  ``max_new_tokens``, so every string gets a ``maxLength``, every array a ``maxItems``, every
  number and integer bounds, and every object ``additionalProperties: false``. The bounded schema
  accepts a subset of what the original accepts, so a completed constrained output is valid;
- ``format: "date"`` is turned into an ISO ``YYYY-MM-DD`` pattern in the bounded copy.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker

from model.errors import SchemaError

__all__ = [
    "DATE_PATTERN",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_NUMBER_BOUND",
    "build_extraction_prompt",
    "canonical_schema_json",
    "check_schema_compiles",
    "prepare_schema",
    "validate_output",
]

DEFAULT_MAX_LENGTH = 200
DEFAULT_MAX_ITEMS = 20
# Numbers and integers without bounds get [-B, B]; the grammar then also limits fractions to a
# few digits, so a number always ends.
DEFAULT_NUMBER_BOUND = 1_000_000_000_000
MAX_DEPTH = 8
MAX_PROPERTIES = 200
# A real calendar date (month 01-12, day valid for the month; 29 February only in years
# divisible by 4), so what the grammar allows also passes jsonschema's "date" format check in
# all but the century years 1900/2100.
DATE_PATTERN = (
    r"^(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    r"|\d{4}-(0[13-9]|1[0-2])-(29|30)"
    r"|\d{4}-(0[13578]|1[02])-31"
    r"|\d{2}([02468][048]|[13579][26])-02-29)$"
)

_TYPES = ("string", "number", "integer", "boolean", "null", "array", "object")
# Keywords that only describe; kept, never enforced by the grammar.
_ANNOTATIONS = {"description", "title", "$schema", "examples", "default", "$comment"}
_KEYWORDS = {
    "type",
    "enum",
    "format",
    "required",
    "properties",
    "items",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "additionalProperties",
} | _ANNOTATIONS
_FORMATS = ("date",)
_FORMAT_CHECKER = FormatChecker(formats=_FORMATS)


def prepare_schema(schema: Any) -> dict[str, Any]:
    """Check ``schema`` is a supported JSON Schema and return its bounded copy for decoding.

    Supported: an object at the top level with ``properties``; ``type`` (one of string, number,
    integer, boolean, null, array, object, or a list of them), ``enum`` (of JSON scalars),
    ``format: "date"``, ``required``, ``properties``, ``items``, ``minimum``/``maximum``,
    ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``additionalProperties: false``, and
    the annotations ``description``, ``title``, ``examples``, ``default``. Anything else
    (``$ref``, ``pattern``, ``oneOf``, other formats, free-form objects, arrays without
    ``items``) raises ``SchemaError`` naming the problem and where it is.
    """
    if not isinstance(schema, Mapping):
        raise SchemaError(f"The schema must be a JSON object, not {type(schema).__name__}.")
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = _path(list(exc.path))
        raise SchemaError(
            f"The schema is not valid JSON Schema at {where}: {exc.message}."
        ) from exc
    if _types_of(schema, "$") != ["object"]:
        raise SchemaError('The schema must describe an object at the top level ("type": "object").')
    bounded = copy.deepcopy(dict(schema))
    counter = [0]
    _bound(bounded, "$", 0, counter)
    return bounded


def canonical_schema_json(schema: Mapping[str, Any]) -> str:
    """One compact string per distinct schema: a cache key for compiled grammars.

    Keys are not sorted: the order of ``properties`` is the order the fields are generated in.
    """
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def validate_output(schema: Mapping[str, Any], obj: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is valid against the user's ``schema``.

    Checks ``format: "date"`` as well (a real calendar date), which jsonschema skips by default.
    """
    Draft202012Validator(schema, format_checker=_FORMAT_CHECKER).validate(obj)


def check_schema_compiles(schema: Mapping[str, Any], *, timeout_s: float = 120.0) -> None:
    """Compile ``prepare_schema(schema)`` with xgrammar, no tokenizer; ``SchemaError`` if it fails.

    xgrammar imports torch and transformers when imported, so the compile runs in a fresh Python
    subprocess: the caller (the CLI) never imports them, at the cost of a few seconds. Raises
    ``SchemaError`` for an unsupported schema (without starting the subprocess) or one the
    decoder cannot compile, with the decoder's reason; ``RuntimeError`` if xgrammar is missing.
    """
    bounded = prepare_schema(schema)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE_SCRIPT],
            input=json.dumps(bounded),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SchemaError(f"The schema took over {timeout_s:.0f} s to compile.") from exc
    if done.returncode == 0:
        return
    reason = (done.stdout.strip() or done.stderr.strip() or "unknown error").splitlines()[-1]
    if done.returncode == _NO_XGRAMMAR:
        raise RuntimeError(f"cannot check the schema: xgrammar is not installed ({reason})")
    raise SchemaError(f"The decoder cannot compile the schema: {reason}.")


def build_extraction_prompt(schema: Mapping[str, Any], instructions: str | None = None) -> str:
    """The instruction text for one extraction: the fields to fill, then the user's instructions.

    Lists every property (nested ones indented) with its type, whether it is required, its
    allowed values and its description, and asks for one JSON object only.
    """
    lines = [
        "Extract information from this document image as one JSON object with these fields:",
        *_describe_properties(schema, 0),
    ]
    if instructions and instructions.strip():
        lines += ["", f"Instructions: {instructions.strip()}"]
    lines += [
        "",
        "Use null for a field that is not in the document, if null is allowed. "
        "Answer with the JSON object only, no other text.",
    ]
    return "\n".join(lines)


_NO_XGRAMMAR = 4
_COMPILE_SCRIPT = f"""
import sys
try:
    import xgrammar
except ImportError as exc:
    print(exc)
    sys.exit({_NO_XGRAMMAR})
try:
    xgrammar.Grammar.from_json_schema(sys.stdin.read(), any_whitespace=False, strict_mode=True)
except Exception as exc:
    print(str(exc).strip() or type(exc).__name__)
    sys.exit(3)
"""


def _bound(node: dict[str, Any], where: str, depth: int, counter: list[int]) -> None:
    """Check one (sub)schema and add the decoding bounds to it, in place."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"The schema nests deeper than {MAX_DEPTH} levels at {where}.")
    unknown = sorted(set(node) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"The schema uses unsupported keyword {unknown[0]!r} at {where}.")
    if "enum" in node:
        _check_enum(node, where)
    types = _types_of(node, where)
    if not types and "enum" not in node:
        raise SchemaError(f'The schema at {where} must have a "type" or an "enum".')
    fmt = node.get("format")
    if fmt is not None:
        if fmt not in _FORMATS or "string" not in types:
            raise SchemaError(f'Only "format": "date" on strings is supported, at {where}.')
        del node["format"]
        node["pattern"] = DATE_PATTERN
    if "string" in types and "enum" not in node and fmt is None:
        _pair(node, "minLength", "maxLength", where)
        node.setdefault("maxLength", DEFAULT_MAX_LENGTH)
    if "number" in types or "integer" in types:
        _pair(node, "minimum", "maximum", where)
        node.setdefault("minimum", -DEFAULT_NUMBER_BOUND)
        node.setdefault("maximum", DEFAULT_NUMBER_BOUND)
    if "array" in types:
        if not isinstance(node.get("items"), dict):
            raise SchemaError(f'The array at {where} must describe its elements with "items".')
        _pair(node, "minItems", "maxItems", where)
        node.setdefault("maxItems", DEFAULT_MAX_ITEMS)
        _bound(node["items"], f"{where}[]", depth + 1, counter)
    elif "items" in node:
        raise SchemaError(f'"items" is only allowed on arrays, at {where}.')
    if "object" in types:
        _bound_object(node, where, depth, counter)
    elif "properties" in node or "required" in node:
        raise SchemaError(f'"properties" and "required" are only allowed on objects, at {where}.')


def _bound_object(node: dict[str, Any], where: str, depth: int, counter: list[int]) -> None:
    properties = node.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise SchemaError(f'The object at {where} must list its fields in "properties".')
    if node.get("additionalProperties", False) is not False:
        raise SchemaError(f'Only "additionalProperties": false is supported, at {where}.')
    node["additionalProperties"] = False
    missing = [name for name in node.get("required", []) if name not in properties]
    if missing:
        raise SchemaError(f"Required field {missing[0]!r} at {where} is not in its properties.")
    for name, sub in properties.items():
        counter[0] += 1
        if counter[0] > MAX_PROPERTIES:
            raise SchemaError(f"The schema has more than {MAX_PROPERTIES} fields.")
        if not isinstance(sub, dict):
            raise SchemaError(f"Field {name!r} at {where} must be described by an object.")
        _bound(sub, f"{where}.{name}", depth + 1, counter)


def _types_of(node: Mapping[str, Any], where: str) -> list[str]:
    raw = node.get("type", [])
    types = [raw] if isinstance(raw, str) else list(raw)
    for name in types:
        if name not in _TYPES:
            raise SchemaError(f"Type {name!r} at {where} is not supported.")
    return types


def _check_enum(node: Mapping[str, Any], where: str) -> None:
    values = node["enum"]
    if not values:
        raise SchemaError(f"The enum at {where} must list at least one value.")
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(f"The enum at {where} has a non-finite number.")
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise SchemaError(
                f"The enum at {where} may only hold strings, numbers, true/false/null."
            )


def _pair(node: Mapping[str, Any], low: str, high: str, where: str) -> None:
    lo, hi = node.get(low), node.get(high)
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"{low} is greater than {high} at {where}.")


def _path(parts: list[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


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
    return []


def _describe(sub: Mapping[str, Any], required: bool) -> str:
    kind = _type_text(sub) if "type" in sub else "value"
    if "enum" in sub:
        kind = f"{kind}, one of " + ", ".join(json.dumps(v) for v in sub["enum"])
    text = f"{kind}, {'required' if required else 'optional'}"
    description = sub.get("description")
    if isinstance(description, str) and description.strip():
        text += f" — {description.strip()}"
    return text


def _type_text(sub: Mapping[str, Any]) -> str:
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
