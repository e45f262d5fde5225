"""model.schema: the supported subset, the bounded copy, the prompt and output validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from model.engine import GenerationRequest
from model.errors import ModelError, SchemaError
from model.fake import FakeEngine
from model.schema import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_LENGTH,
    build_extraction_prompt,
    check_schema_compiles,
    prepare_schema,
    validate_output,
)

ROOT = Path(__file__).resolve().parents[3]

INVOICE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "description": "Name of the seller"},
        "number": {"type": "string", "maxLength": 12, "description": "Invoice number"},
        "date": {"type": "string", "format": "date", "description": "Issue date"},
        "currency": {"enum": ["EUR", "USD", "GBP"], "description": "Currency code"},
        "total": {"type": "number", "minimum": 0, "maximum": 100000, "description": "Grand total"},
        "paid": {"type": "boolean"},
        "address": {
            "type": "object",
            "description": "Seller address",
            "properties": {
                "city": {"type": "string", "maxLength": 20, "description": "City name"},
                "postcode": {"type": ["string", "null"], "maxLength": 8},
            },
            "required": ["city"],
        },
        "lines": {
            "type": "array",
            "maxItems": 3,
            "description": "Line items",
            "items": {
                "type": "object",
                "properties": {
                    "item": {"type": "string", "maxLength": 16, "description": "What was sold"},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                },
                "required": ["item", "quantity"],
            },
        },
    },
    "required": ["vendor", "number", "date", "currency", "total", "address", "lines"],
}


def test_prepare_schema_bounds_every_open_ended_value() -> None:
    bounded = prepare_schema(INVOICE)
    props = bounded["properties"]
    assert props["vendor"]["maxLength"] == DEFAULT_MAX_LENGTH
    assert props["number"]["maxLength"] == 12  # the user's own bound is kept
    assert "format" not in props["date"] and props["date"]["pattern"].startswith("^")
    assert props["total"]["minimum"] == 0 and props["total"]["maximum"] == 100000
    assert bounded["additionalProperties"] is False
    assert props["address"]["additionalProperties"] is False
    assert props["lines"]["items"]["additionalProperties"] is False
    assert "format" in INVOICE["properties"]["date"]  # the original is untouched
    loose = prepare_schema(
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "x": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        }
    )["properties"]
    assert loose["tags"]["maxItems"] == DEFAULT_MAX_ITEMS
    assert loose["tags"]["items"]["maxLength"] == DEFAULT_MAX_LENGTH
    for name in ("n", "x"):
        assert loose[name]["minimum"] < 0 < loose[name]["maximum"]


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ([1, 2], "JSON object"),
        ({"type": "array", "items": {"type": "string"}}, "top level"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "not valid JSON Schema"),
        ({"type": "object"}, "properties"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "'$ref'"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}, "pattern"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "items"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}, "date"),
        ({"type": "object", "properties": {"a": {"type": "object"}}}, "$.a"),
        ({"type": "object", "properties": {"a": {"description": "no type"}}}, "type"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}},
            },
            "minimum",
        ),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": True,
            },
            "additionalProperties",
        ),
    ],
)
def test_invalid_or_unsupported_schemas_raise_schema_error(schema: Any, words: str) -> None:
    with pytest.raises(SchemaError) as info:
        prepare_schema(schema)
    assert isinstance(info.value, ModelError)
    assert info.value.code == "schema_invalid"
    assert words in info.value.message
    assert info.value.message.endswith(".") and "\n" not in info.value.message


def test_prompt_mentions_every_field_and_description_and_the_instructions() -> None:
    prompt = build_extraction_prompt(INVOICE, "Amounts are in euros.")

    def walk(node: dict[str, Any]) -> None:
        for name, sub in node.get("properties", {}).items():
            assert name in prompt
            if "description" in sub:
                assert sub["description"] in prompt
            walk(sub)
            walk(sub.get("items", {}))

    walk(INVOICE)
    assert "Amounts are in euros." in prompt
    assert "YYYY-MM-DD" in prompt and '"EUR"' in prompt and "JSON" in prompt
    assert "Instructions" not in build_extraction_prompt(INVOICE, None)


def test_validate_output_uses_the_original_schema_and_checks_dates() -> None:
    good = {
        "vendor": "ACME",
        "number": "INV-1",
        "date": "2024-02-29",
        "currency": "EUR",
        "total": 12.5,
        "address": {"city": "Paris", "postcode": None},
        "lines": [{"item": "bolts", "quantity": 3}],
    }
    validate_output(INVOICE, good)
    for bad in ({**good, "date": "2023-02-30"}, {**good, "currency": "JPY"}, {"vendor": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_output(INVOICE, bad)


def test_fake_engine_extraction_output_validates() -> None:
    engine = FakeEngine()
    requests = [GenerationRequest(Image.new("RGB", (8 + i, 8)), "extract") for i in range(3)]
    results = engine.generate(requests, max_new_tokens=1000, json_schema=INVOICE)
    assert len(results) == 3
    for result in results:
        assert result.finished
        validate_output(INVOICE, json.loads(result.text))
    [cut] = engine.generate(requests[:1], max_new_tokens=10, json_schema=INVOICE)
    assert not cut.finished and len(cut.text) == 10
    with pytest.raises(SchemaError):
        engine.generate(requests, max_new_tokens=10, json_schema={"type": "string"})
    [caption] = engine.generate(requests[:1], max_new_tokens=10)
    assert caption.finished and caption.text.startswith("caption of")


def test_check_schema_compiles_accepts_a_supported_schema() -> None:
    check_schema_compiles(INVOICE)
    with pytest.raises(SchemaError):
        check_schema_compiles({"type": "object", "properties": {}})


def test_schema_module_does_not_import_torch_or_xgrammar() -> None:
    code = (
        "import sys, model.schema, model.documents\n"
        "print(','.join(m for m in ('torch', 'transformers', 'xgrammar') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
