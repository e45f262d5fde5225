"""model.schema: the supported subset, the bounded copy, the prompt and output validation."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import jsonschema
import llguidance
import pytest
from PIL import Image
from pydantic import BaseModel, Field

from model.constrained import build_json_grammar
from model.engine import GenerationRequest
from model.errors import ModelError, SchemaError
from model.fake import FakeEngine
from model.patterns import build_pattern_example
from model.schema import (
    DATE_PATTERN,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_LENGTH,
    EXTRACTION_TOKEN_CAP,
    build_extraction_prompt,
    check_schema_compiles,
    default_max_new_tokens,
    longest_output_chars,
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


class Address(BaseModel):
    """Where the seller is."""

    city: str = Field(max_length=20, description="City name")
    postcode: str | None = Field(default=None, pattern=r"^\d{5}$")


class Line(BaseModel):
    item: str = Field(max_length=16, description="What was sold")
    quantity: int = Field(ge=1, le=99)
    unit_price: float | None = Field(default=None, ge=0, le=10000)


class Invoice(BaseModel):
    """An invoice as pydantic users write it: nested models ($defs/$ref, one used twice),
    Optional fields (anyOf [T, null]), a pattern, a Literal, a date."""

    vendor: str = Field(max_length=24, description="Name of the seller")
    number: str = Field(pattern=r"^INV-\d+$", max_length=10, description="Invoice number")
    date: datetime.date | None = Field(default=None, description="Issue date")
    currency: Literal["EUR", "USD", "GBP"]
    total: float = Field(ge=0, le=100000)
    paid: bool | None = None
    seller: Address = Field(description="Seller address")
    billing: Address | None = None
    lines: list[Line] = Field(max_length=2)


PYDANTIC_INVOICE: dict[str, Any] = Invoice.model_json_schema()


def build_longest_text(node: Mapping[str, Any]) -> str:
    """The longest JSON text a bounded schema allows, written as the decoder writes it.

    Numbers are written at the bound with the longer digits (the test schemas' bounds are whole
    numbers), strings at their ``maxLength`` or their pattern's longest match.
    """
    if "anyOf" in node:
        return max((build_longest_text(b) for b in node["anyOf"]), key=len)
    if "enum" in node:
        return max((json.dumps(v) for v in node["enum"]), key=len)
    raw = node["type"]
    return max(
        (_longest_of(node, kind) for kind in ([raw] if isinstance(raw, str) else raw)), key=len
    )


def _longest_of(node: Mapping[str, Any], kind: str) -> str:
    if kind == "string":
        if "pattern" in node:
            return json.dumps(build_pattern_example(node["pattern"], longest=True))
        return json.dumps("W" * node["maxLength"])
    if kind in ("number", "integer"):
        bound = max((node["minimum"], node["maximum"]), key=lambda v: len(str(int(v))))
        return str(int(bound)) + (".000000" if kind == "number" else "")
    if kind == "array":
        return "[" + ", ".join([build_longest_text(node["items"])] * node["maxItems"]) + "]"
    if kind == "object":
        members = [
            f"{json.dumps(k)}: {build_longest_text(v)}" for k, v in node["properties"].items()
        ]
        return "{" + ", ".join(members) + "}"
    return "false" if kind == "boolean" else "null"


def grammar_accepts(bounded: Mapping[str, Any], text: str) -> bool:
    """Whether the decoder's grammar for a bounded schema accepts ``text``, byte by byte."""
    matcher = llguidance.LLMatcher(BYTES, build_json_grammar(bounded), log_level=0)
    data = list(text.encode())
    accepted: bool = matcher.try_consume_tokens(data) == len(data) and matcher.is_accepting()
    return accepted


class _ByteTokens:
    """A tokenizer of one token per byte, and end-of-sequence as token 256."""

    eos_token_id = 256
    bos_token_id = None
    tokens: ClassVar = [bytes([i]) for i in range(256)] + [b"</s>"]
    special_token_ids: ClassVar = [256]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode())


BYTES = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens()))


EXTRACT_PAGE = ROOT / "docs" / "kinds" / "extract.md"


def read_docs_schema() -> dict[str, Any]:
    """The example schema of the "Writing a schema" section of docs/kinds/extract.md."""
    text = EXTRACT_PAGE.read_text(encoding="utf-8")
    after = text[text.index("\n## Writing a schema\n") :]
    block = re.search(r"```json\n(.*?)```", after, re.DOTALL)
    assert block is not None
    schema: dict[str, Any] = json.loads(block.group(1))
    return schema


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
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "'#/x' at $.a points at no"),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://x.org/s.json"}}},
            "inside the schema",
        ),
        (  # recursive: a tree of nodes cannot be bounded
            {
                "type": "object",
                "properties": {"root": {"$ref": "#/$defs/Node"}},
                "$defs": {
                    "Node": {
                        "type": "object",
                        "properties": {
                            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                        },
                    }
                },
            },
            "'#/$defs/Node' at $.root.children[] makes the schema recursive",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/A", "maxLength": 3}},
                "$defs": {"A": {"type": "string"}},
            },
            "not 'maxLength', at $.a",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "anyOf": [{}]}}},
            "not 'type', at $.a",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"anyOf": [{"type": "null"}, {"type": "string", "x": 1}]}},
            },
            "'x' at $.a.anyOf[1]",
        ),
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "null"}]}}}, "'oneOf'"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}},
            "pattern at $.a is not supported: only (…) and (?:…) groups",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "pattern": "^x+$", "minLength": 2}},
            },
            "shorter than minLength",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "format": "date", "pattern": "^2"}},
            },
            "cannot be combined",
        ),
        ({"type": "object", "properties": {"a": {"type": "integer", "pattern": "1"}}}, "strings"),
        ({"type": "object", "properties": {"a": {"type": "number", "maximum": 1e19}}}, "1e18"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "number", "exclusiveMinimum": 1, "maximum": 1}},
            },
            "leave no number",
        ),
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


def test_schema_module_does_not_import_torch_or_llguidance() -> None:
    code = (
        "import sys, model.schema, model.documents\n"
        "print(','.join(m for m in ('torch', 'transformers', 'llguidance') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""


def test_checking_that_a_schema_compiles_imports_no_torch_and_starts_no_process() -> None:
    code = (
        "import subprocess, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError('a subprocess was started')\n"
        "subprocess.Popen = refuse\n"
        "from model.schema import check_schema_compiles\n"
        "check_schema_compiles({'type': 'object', 'properties': {'a': {'type': 'integer'}}})\n"
        "print(','.join(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""


def test_a_pydantic_schema_is_accepted_and_bounded_through_refs_and_any_of() -> None:
    text = json.dumps(PYDANTIC_INVOICE)
    assert "$defs" in PYDANTIC_INVOICE and '"$ref"' in text and '"anyOf"' in text  # as generated
    bounded = prepare_schema(PYDANTIC_INVOICE)
    assert '"$ref"' not in json.dumps(bounded) and "$defs" not in bounded
    props = bounded["properties"]
    seller = props["seller"]
    assert seller["description"] == "Seller address"  # the annotation next to the $ref wins
    assert (
        seller["additionalProperties"] is False and seller["properties"]["city"]["maxLength"] == 20
    )
    postcode = seller["properties"]["postcode"]["anyOf"]
    assert postcode == [{"pattern": r"^\d{5}$", "type": "string"}, {"type": "null"}]
    billing, null = props["billing"]["anyOf"]  # Optional[Address]: the same bounds, or null
    assert null == {"type": "null"}
    assert (
        billing["additionalProperties"] is False and billing["properties"] == seller["properties"]
    )
    # The pattern carries the bound (the decoder ignores maxLength next to a pattern).
    assert props["number"]["pattern"] == r"^INV-\d{1,6}$" and "maxLength" not in props["number"]
    assert props["date"]["anyOf"][0] == {"type": "string", "pattern": DATE_PATTERN}
    assert props["currency"]["enum"] == ["EUR", "USD", "GBP"]
    lines = props["lines"]
    assert lines["maxItems"] == 2 and lines["items"]["additionalProperties"] is False
    price = lines["items"]["properties"]["unit_price"]["anyOf"][0]
    assert (price["minimum"], price["maximum"]) == (0, 10000)
    assert Invoice.model_json_schema() == PYDANTIC_INVOICE  # the original is untouched
    check_schema_compiles(PYDANTIC_INVOICE)


def test_optional_fields_without_bounds_get_the_default_bounds_inside_any_of() -> None:
    class Note(BaseModel):
        text: str | None = None
        tags: list[str] | None = None
        amount: float | None = Field(default=None, gt=0)

    props = prepare_schema(Note.model_json_schema())["properties"]
    assert props["text"]["anyOf"][0]["maxLength"] == DEFAULT_MAX_LENGTH
    tags = props["tags"]["anyOf"][0]
    assert (
        tags["maxItems"] == DEFAULT_MAX_ITEMS and tags["items"]["maxLength"] == DEFAULT_MAX_LENGTH
    )
    amount = props["amount"]["anyOf"][0]
    assert amount["exclusiveMinimum"] == 0 and "minimum" not in amount
    assert amount["maximum"] > 0


def test_the_prompt_follows_refs_and_names_optional_fields() -> None:
    prompt = build_extraction_prompt(PYDANTIC_INVOICE, None)
    for line in (
        "- seller: object, required — Seller address",
        "  - city: string, required — City name",
        r"  - postcode: string matching ^\d{5}$ or null, optional",
        "- billing: object or null, optional",
        "- date: date (YYYY-MM-DD) or null, optional — Issue date",
        r"- number: string matching ^INV-\d+$, required — Invoice number",
        '- currency: string, one of "EUR", "USD", "GBP", required',
        "  - unit_price: number or null, optional",
    ):
        assert line + "\n" in prompt, line


def test_fake_engine_output_validates_against_the_pydantic_model() -> None:
    requests = [GenerationRequest(Image.new("RGB", (8, 8)), "extract")]
    [result] = FakeEngine().generate(requests, max_new_tokens=1000, json_schema=PYDANTIC_INVOICE)
    assert result.finished
    Invoice.model_validate_json(result.text)


def test_the_default_budget_covers_the_longest_output_of_a_pydantic_schema() -> None:
    bounded = prepare_schema(PYDANTIC_INVOICE)
    longest = build_longest_text(bounded)
    # The size model matches the decoder: the longest text it counts is one the grammar accepts.
    assert grammar_accepts(bounded, longest)
    assert len(longest) == longest_output_chars(bounded)
    Invoice.model_validate_json(longest)
    # One token per character at most (ASCII), plus the end of sequence.
    assert default_max_new_tokens(PYDANTIC_INVOICE) == len(longest) + 1


def test_the_default_budget_for_the_docs_schema_is_the_cap() -> None:
    documented = read_docs_schema()
    bounded = prepare_schema(documented)
    longest = longest_output_chars(bounded)
    # 50 line items of up to 80 characters each: far above what one page needs.
    assert longest == len(build_longest_text(bounded)) == 6621
    assert default_max_new_tokens(documented) == EXTRACTION_TOKEN_CAP == 2048
    assert default_max_new_tokens(documented, cap=8192) == longest + 1
    text = " ".join(EXTRACT_PAGE.read_text(encoding="utf-8").split())
    assert "allows 6621 characters" in text and "at most 2048" in text  # the page's figures
    small = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    assert default_max_new_tokens(small) == len('{"ok": false}') + 1


def test_refs_through_definitions_and_at_the_root_are_inlined_and_blowups_refused() -> None:
    schema = {
        "$ref": "#/definitions/Doc",
        "definitions": {
            "Doc": {"type": "object", "properties": {"who": {"$ref": "#/definitions/Name"}}},
            "Name": {"type": "string", "maxLength": 9},
        },
    }
    assert prepare_schema(schema) == {
        "type": "object",
        "properties": {"who": {"type": "string", "maxLength": 9}},
        "additionalProperties": False,
    }
    # Each level uses the one below twice: 2**12 copies once expanded.
    defs: dict[str, Any] = {
        f"L{i}": {
            "type": "object",
            "properties": {n: {"$ref": f"#/$defs/L{i + 1}"} for n in ("a", "b")},
        }
        for i in range(12)
    }
    defs["L12"] = {"type": "boolean"}
    wide = {"type": "object", "properties": {"x": {"$ref": "#/$defs/L0"}}, "$defs": defs}
    with pytest.raises(SchemaError, match="too large once its"):
        prepare_schema(wide)


def _nested_fields(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"a": node}}
    return node


def _ref_chain(length: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(length)}
    defs[f"d{length}"] = {"type": "string"}
    return {"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": defs}


@pytest.mark.parametrize(
    "schema",
    [_nested_fields(120), _nested_fields(5000), _ref_chain(900)],
    ids=["fields-120-deep", "fields-5000-deep", "ref-chain-900"],
)
def test_schemas_too_deep_to_recurse_through_are_schema_errors(schema: dict[str, Any]) -> None:
    # Before: RecursionError in jsonschema or in resolving the $refs (an internal error).
    for use in (prepare_schema, build_extraction_prompt, default_max_new_tokens):
        with pytest.raises(SchemaError, match="deeper than 64"):
            use(schema)


def test_a_schema_as_deep_as_the_subset_allows_still_passes_the_nesting_check() -> None:
    # Optional objects (anyOf [object, null]) as deep as MAX_DEPTH allows: about 32 JSON levels.
    node: dict[str, Any] = {"type": "string"}
    for _ in range(7):
        node = {"anyOf": [{"type": "object", "properties": {"a": node}}, {"type": "null"}]}
    schema = {"type": "object", "properties": {"a": node}}
    assert prepare_schema(schema)["type"] == "object"
    refs = _ref_chain(40)  # a long but finite chain of aliases is fine
    assert prepare_schema(refs)["properties"]["a"]["type"] == "string"
