"""User JSON Schemas for extraction: check the supported subset, bound it for decoding, validate.

Light on purpose (jsonschema only, no torch, no llguidance at import): the CLI refuses a bad schema
at submit with these functions. Three schemas are in play:

- the user's *original* schema, which results are validated against (``validate_output``);
- the *bounded* copy from ``prepare_schema``, which the engine turns into a grammar. A random (or
  confused) model left free would write strings, arrays and numbers forever and run to
  ``max_new_tokens``, so every string gets a ``maxLength``, every array a ``maxItems``, every
  number and integer bounds, and every object ``additionalProperties: false``. The bounded schema
  accepts a subset of what the original accepts, so a completed constrained output is valid;
- ``format: "date"`` is turned into an ISO ``YYYY-MM-DD`` pattern in the bounded copy.

Internal ``$ref``s (pydantic's ``$defs``) are inlined first (``model.schema_refs``), so the
bounds reach every use of a definition; ``anyOf`` branches (pydantic's ``Optional[T]`` is
``anyOf [T, null]``) are bounded one by one; a ``pattern`` gets its bound inside the regular
expression (``model.patterns``). ``default_max_new_tokens`` sizes an extraction's token budget
from the bounded schema.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker

from model.errors import SchemaError
from model.patterns import PatternError, bound_pattern
from model.schema_prompt import build_extraction_prompt
from model.schema_refs import MAX_SCHEMA_NESTING, check_schema_nesting, resolve_refs
from model.schema_size import longest_output_chars

__all__ = [
    "DATE_PATTERN",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_NUMBER_BOUND",
    "EXTRACTION_TOKEN_CAP",
    "MAX_SCHEMA_NESTING",
    "build_extraction_prompt",
    "canonical_schema_json",
    "check_schema_compiles",
    "default_max_new_tokens",
    "longest_output_chars",
    "prepare_schema",
    "resolve_refs",
    "validate_output",
]

DEFAULT_MAX_LENGTH = 200
DEFAULT_MAX_ITEMS = 20
# Numbers and integers without bounds get [-B, B]; the grammar then also limits fractions to a
# few digits, so a number always ends.
DEFAULT_NUMBER_BOUND = 1_000_000_000_000
# The decoder's number grammar is exact up to here (beyond, llguidance cannot build the range).
MAX_NUMBER_BOUND = 10**18
# The most tokens ``default_max_new_tokens`` gives; see there.
EXTRACTION_TOKEN_CAP = 2048
MAX_DEPTH = 8
MAX_PROPERTIES = 200
# A real calendar date (year 0001-9999, month 01-12, day valid for the month, 29 February only
# in leap years), so what the grammar allows also passes jsonschema's "date" format check and
# Python's ``date.fromisoformat`` (pydantic's ``date``).
_YEAR = r"(\d{3}[1-9]|\d{2}[1-9]\d|\d[1-9]\d{2}|[1-9]\d{3})"
_LEAP_YEAR = r"(\d{2}([02468][48]|[13579][26]|[2468]0)|([2468][048]|[13579][26]|0[48])00)"
DATE_PATTERN = (
    rf"^({_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    rf"|{_YEAR}-(0[13-9]|1[0-2])-(29|30)"
    rf"|{_YEAR}-(0[13578]|1[02])-31"
    rf"|{_LEAP_YEAR}-02-29)$"
)

_TYPES = ("string", "number", "integer", "boolean", "null", "array", "object")
# Keywords that only describe; kept, never enforced by the grammar.
_ANNOTATIONS = {"description", "title", "$schema", "examples", "default", "$comment"}
_KEYWORDS = {
    "type",
    "enum",
    "const",
    "anyOf",
    "format",
    "pattern",
    "required",
    "properties",
    "items",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
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
    integer, boolean, null, array, object, or a list of them), ``enum``/``const`` (of JSON
    scalars), ``format: "date"``, ``pattern`` (``model.patterns``' subset), ``required``,
    ``properties``, ``items``, ``anyOf``, ``minimum``/``maximum`` and their ``exclusive``
    forms, ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``additionalProperties:
    false``, internal ``$ref``s with ``$defs``/``definitions`` (inlined), and the annotations
    ``description``, ``title``, ``examples``, ``default``. Anything else (external or recursive
    ``$ref``, ``oneOf``/``allOf``, other formats, free-form objects, arrays without ``items``)
    raises ``SchemaError`` naming the problem and where it is.
    """
    if not isinstance(schema, Mapping):
        raise SchemaError(f"The schema must be a JSON object, not {type(schema).__name__}.")
    check_schema_nesting(schema)  # before jsonschema recurses through it
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = _path(list(exc.path))
        raise SchemaError(
            f"The schema is not valid JSON Schema at {where}: {exc.message}."
        ) from exc
    bounded = copy.deepcopy(resolve_refs(schema))
    if _types_of(bounded, "$") != ["object"]:
        raise SchemaError('The schema must describe an object at the top level ("type": "object").')
    counter = [0]
    _bound(bounded, "$", 0, counter)
    return bounded


def default_max_new_tokens(schema: Mapping[str, Any], *, cap: int = EXTRACTION_TOKEN_CAP) -> int:
    """The token budget for one extraction output when the user chose none: the longest output
    the bounded schema allows, in characters, plus one for the end-of-sequence token, at most
    ``cap``.

    Why characters bound tokens: the decoder only emits tokens that add text, and a token is at
    least one byte; the structure and numbers are ASCII, and free strings exclude quotes and
    backslashes, so an output whose strings are ASCII takes at most one token per character in
    any byte-level tokenizer (LLaMA/Mistral SentencePiece with byte fallback, GPT-style BPE).
    Real text averages three to four characters per token, so real outputs use a fraction of
    this; only non-ASCII text written one byte per token could exceed it. The cap
    (``EXTRACTION_TOKEN_CAP``, 2048) keeps generous bounds (the defaults: 200 characters per
    string, 20 items per array) from asking for more than a LLaVA-1.5 context (4096 tokens, 576
    of them the image) has room for; it is far above what one page of a real document needs
    (about 200-400 tokens for an invoice). The engine refuses a request whose prompt plus
    budget exceeds the model's context (``prompt_too_long``): a caller that knows the model
    passes ``cap=max_context - prompt_tokens``. Raises ``SchemaError`` like ``prepare_schema``.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, not {cap}")
    return min(cap, longest_output_chars(prepare_schema(schema)) + 1)


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


def check_schema_compiles(schema: Mapping[str, Any]) -> None:
    """Compile ``prepare_schema(schema)``'s grammar, without a tokenizer; ``SchemaError`` with the
    decoder's reason if it does not compile (or if the schema is unsupported).

    In this process: the decoder (llguidance, ``model.constrained``) imports no torch and loads
    in about 0.1 s, and a schema compiles in milliseconds.
    """
    from model.constrained import build_json_grammar, check_json_grammar

    check_json_grammar(build_json_grammar(prepare_schema(schema)))


def _bound(node: dict[str, Any], where: str, depth: int, counter: list[int]) -> None:
    """Check one (sub)schema and add the decoding bounds to it, in place."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"The schema nests deeper than {MAX_DEPTH} levels at {where}.")
    unknown = sorted(set(node) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"The schema uses unsupported keyword {unknown[0]!r} at {where}.")
    if "anyOf" in node:
        _bound_any_of(node, where, depth, counter)
        return
    if "const" in node:
        if "enum" in node:
            raise SchemaError(f'Use "const" or "enum", not both, at {where}.')
        node["enum"] = [node.pop("const")]
    if "enum" in node:
        _check_enum(node, where)
    types = _types_of(node, where)
    if not types and "enum" not in node:
        raise SchemaError(f'The schema at {where} must have a "type" or an "enum".')
    if "string" in types:
        _bound_string(node, where)
    elif "format" in node or "pattern" in node:
        raise SchemaError(f'"format" and "pattern" are only allowed on strings, at {where}.')
    if "number" in types or "integer" in types:
        _bound_number(node, where)
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


def _bound_any_of(node: dict[str, Any], where: str, depth: int, counter: list[int]) -> None:
    """Bound each branch; the grammar takes the branches' union, so bounds hold whichever."""
    others = sorted(set(node) - _ANNOTATIONS - {"anyOf"})
    if others:
        raise SchemaError(
            f'"anyOf" may only stand next to annotations (description, title), '
            f"not {others[0]!r}, at {where}."
        )
    for i, branch in enumerate(node["anyOf"]):
        if not isinstance(branch, dict):
            raise SchemaError(f"Branch {i} of the anyOf at {where} must be an object.")
        _bound(branch, f"{where}.anyOf[{i}]", depth, counter)


def _bound_string(node: dict[str, Any], where: str) -> None:
    """A date becomes ``DATE_PATTERN``; a pattern gets its bound inside; else ``maxLength``.

    ``minLength``/``maxLength`` next to a pattern leave the bounded copy once the pattern keeps
    within them, so the pattern alone says how long the string can be (``model.schema_size``
    reads it). With an ``enum`` the values are the bound.
    """
    fmt = node.get("format")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise SchemaError(f'Only "format": "date" on strings is supported, at {where}.')
        if "pattern" in node:
            raise SchemaError(f'"format" and "pattern" cannot be combined, at {where}.')
        del node["format"]
        node["pattern"] = DATE_PATTERN
        node.pop("minLength", None)
        node.pop("maxLength", None)
    elif "enum" in node:
        node.pop("pattern", None)
    elif "pattern" in node:
        _pair(node, "minLength", "maxLength", where)
        try:
            node["pattern"], _ = bound_pattern(
                node["pattern"],
                min_length=node.pop("minLength", None),
                max_length=node.pop("maxLength", None),
                default_max_length=DEFAULT_MAX_LENGTH,
            )
        except PatternError as exc:
            raise SchemaError(f"The pattern at {where} is not supported: {exc}.") from exc
    else:
        _pair(node, "minLength", "maxLength", where)
        node.setdefault("maxLength", DEFAULT_MAX_LENGTH)


def _bound_number(node: dict[str, Any], where: str) -> None:
    _pair(node, "minimum", "maximum", where)
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        value = node.get(key)
        if value is not None and not abs(value) <= MAX_NUMBER_BOUND:
            raise SchemaError(f"{key} at {where} is beyond ±1e18, which the decoder cannot hold.")
    # (value, exclusive): at equal values the exclusive bound is the tighter one.
    lows = [(node[k], k != "minimum") for k in ("minimum", "exclusiveMinimum") if k in node]
    highs = [(node[k], k != "maximum") for k in ("maximum", "exclusiveMaximum") if k in node]
    if lows and highs:
        low, low_open = max(lows)
        high, high_open = min(highs, key=lambda bound: (bound[0], not bound[1]))
        if low > high or (low == high and (low_open or high_open)):
            raise SchemaError(f"The bounds at {where} leave no number between them.")
    if not lows:
        node["minimum"] = -DEFAULT_NUMBER_BOUND
    if not highs:
        node["maximum"] = DEFAULT_NUMBER_BOUND


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
