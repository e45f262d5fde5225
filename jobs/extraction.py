"""Extraction, the parts that are pure domain: checking a request, reading the model's output,
and merging a document's pages into one result."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from jobs.errors import ItemErrorCode, RequestError
from jobs.outcome import Outcome
from model.documents import parse_page_spec
from model.errors import SchemaError
from model.nesting import NestingError, loads_bounded
from model.schema import (
    MAX_SCHEMA_NESTING,
    build_extraction_prompt,
    check_schema_compiles,
    resolve_refs,
)
from model.schema import validate_output as validate_against_schema

__all__ = [
    "build_extraction_prompt",
    "check_extraction",
    "interpret_output",
    "merge_pages",
    "read_schema_file",
]

MIN_DPI, MAX_DPI = 36, 600


def read_schema_file(path: str) -> dict[str, Any]:
    try:
        data = loads_bounded(Path(path).read_text(encoding="utf-8"), MAX_SCHEMA_NESTING)
    except NestingError as exc:
        raise RequestError(
            f"{path}: the schema is not supported: {exc}.", code="schema_invalid"
        ) from None
    except OSError as exc:
        raise RequestError(
            f"{path}: cannot be read ({exc.strerror}).", code="schema_invalid"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"{path}: not valid JSON ({exc}).", code="schema_invalid") from exc
    if not isinstance(data, dict):
        raise RequestError(f"{path}: the schema must be a JSON object.", code="schema_invalid")
    return data


def check_extraction(schema: Mapping[str, Any], pages: str, dpi: int) -> None:
    """Refuses, before anything is written, what the worker could never honour."""
    # ``prepare_schema`` accepts only the JSON Schema subset the decoder compiles, and refuses
    # the rest with the reason and where; then the decoder (llguidance: no torch, milliseconds)
    # compiles the grammar here too, so a schema it refuses is refused at submit, not per item.
    # The worker compiles again, once per schema, with the model's tokenizer.
    try:
        check_schema_compiles(schema)
    except SchemaError as exc:
        raise RequestError(str(exc), code="schema_invalid") from exc
    try:
        parse_page_spec(pages)
    except ValueError as exc:
        raise RequestError(str(exc), code="invalid_pages") from exc
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise RequestError(f"--dpi must be between {MIN_DPI} and {MAX_DPI}.", code="invalid_dpi")


def interpret_output(
    schema: Mapping[str, Any], text: str, *, finished: bool, number: int | None, tokens_out: int
) -> Outcome:
    """Turns constrained model output into a validated object, or a per-page error.

    Output that ran out of tokens is never stored as a result, even if it happens to parse.
    """
    if not finished:
        return Outcome(
            page=number,
            text=text,
            tokens_out=tokens_out,
            error_code=ItemErrorCode.output_truncated,
            error_message="The output reached max_new_tokens before the JSON object was closed.",
        )
    try:
        obj = json.loads(text)
        validate_against_schema(schema, obj)
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        message = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
        return Outcome(
            page=number,
            text=text,
            tokens_out=tokens_out,
            error_code=ItemErrorCode.output_invalid,
            error_message=f"The output does not match the schema: {message}.",
        )
    return Outcome(page=number, text=text, json=obj, tokens_out=tokens_out)


def merge_pages(schema: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document-level object from its pages, in page order.

    Arrays (line items) are concatenated across pages; any other field takes its first
    non-empty value (the vendor and total usually appear once). ``$ref``s are followed, and a
    field whose type or an ``anyOf`` branch is an array (``Optional[list[Line]]``) counts as an
    array unless every page gave null: the pages' lists are concatenated, their nulls skipped.
    """
    merged: dict[str, Any] = {}
    properties = resolve_refs(schema).get("properties", {})
    for name in properties:
        values = [obj[name] for obj in objects if name in obj]
        lists = [value for value in values if isinstance(value, list)]
        if _is_array(properties[name]) and (lists or not values):
            merged[name] = [entry for value in lists for entry in value]
            continue
        present = [v for v in values if v not in (None, "", [], {})]
        if present:
            merged[name] = present[0]
        elif values:
            merged[name] = values[0]
    return merged


def _is_array(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    if kind == "array" or (isinstance(kind, list) and "array" in kind):
        return True
    return any(isinstance(b, Mapping) and _is_array(b) for b in node.get("anyOf", []))
