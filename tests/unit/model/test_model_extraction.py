"""JSON-constrained generation on the tiny checkpoints (random weights, CPU, llguidance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_model_schema import INVOICE, PYDANTIC_INVOICE, Invoice, build_longest_text

from model.engine import DEFAULT_GRAMMAR_CACHE_SIZE, EngineSpec, GenerationRequest
from model.errors import SchemaError
from model.schema import (
    build_extraction_prompt,
    default_max_new_tokens,
    prepare_schema,
    validate_output,
)
from model.transformers_engine import TransformersEngine, load_engine


def _requests(n: int) -> list[GenerationRequest]:
    prompt = build_extraction_prompt(INVOICE, "Read the invoice.")
    return [
        GenerationRequest(Image.new("RGB", (40 + 9 * i, 60 - 3 * i), (25 * i, 120, 90)), prompt)
        for i in range(n)
    ]


def test_every_finished_constrained_output_validates(tiny_engine: TransformersEngine) -> None:
    results = tiny_engine.generate(_requests(6), max_new_tokens=400, json_schema=INVOICE)
    assert len(results) == 6
    finished = [r for r in results if r.finished]
    # A random model, bounded schema: every row ends well inside the budget.
    assert len(finished) == 6
    for result in finished:
        obj = json.loads(result.text)
        validate_output(INVOICE, obj)
        assert 0 < result.tokens_out < 400


def test_too_few_new_tokens_is_unfinished(tiny_engine: TransformersEngine) -> None:
    results = tiny_engine.generate(_requests(2), max_new_tokens=6, json_schema=INVOICE)
    assert [r.finished for r in results] == [False, False]
    assert all(r.tokens_out == 6 for r in results)
    for result in results:
        with pytest.raises(json.JSONDecodeError):
            json.loads(result.text)


def test_unconstrained_results_report_finished(llava_engine: TransformersEngine) -> None:
    results = llava_engine.generate(_requests(2), max_new_tokens=3)
    assert all(r.finished == (r.tokens_out < 3) for r in results)


def test_grammar_is_compiled_once_per_schema(llava_engine: TransformersEngine) -> None:
    llava_engine.generate(_requests(1), max_new_tokens=4, json_schema=INVOICE)
    first = llava_engine._grammar_for(INVOICE)
    assert llava_engine._grammar_for(json.loads(json.dumps(INVOICE))) is first


def test_the_engine_keeps_its_grammar_cache_size(
    tiny_cache: Path, llava_engine: TransformersEngine
) -> None:
    """A worker sees thousands of distinct schemas: the engine keeps the last few compiled."""
    lookups: list[bool] = []
    engine = load_engine(
        EngineSpec(model="tiny-llava", cache_dir=tiny_cache, device="cpu", grammar_cache_size=2),
        on_grammar_lookup=lookups.append,
    )
    schemas = [{**INVOICE, "title": f"invoice {n}"} for n in range(4)]
    for schema in [*schemas, schemas[3], schemas[0]]:
        engine._grammar_for(schema)
    assert len(engine.grammars) == 2 and engine.grammars.max_entries == 2
    assert lookups == [False, False, False, False, True, False]
    assert llava_engine.grammars.max_entries == DEFAULT_GRAMMAR_CACHE_SIZE


def test_unsupported_schema_raises_schema_error(llava_engine: TransformersEngine) -> None:
    # {"type": "object"} alone is any object (OpenAI's json_object); with "additionalProperties"
    # it is a user schema, and one without "properties" is outside the supported subset.
    unsupported = {"type": "object", "additionalProperties": True}
    with pytest.raises(SchemaError):
        llava_engine.generate(_requests(1), max_new_tokens=4, json_schema=unsupported)


def test_a_pydantic_schema_on_its_default_budget_finishes_and_validates(
    tiny_engine: TransformersEngine,
) -> None:
    """Nested models ($ref), Optional fields (anyOf with null), a pattern: every output of the
    random model ends inside the schema's default budget and is a valid ``Invoice``."""
    budget = default_max_new_tokens(PYDANTIC_INVOICE)
    prompt = build_extraction_prompt(PYDANTIC_INVOICE, "Read the invoice.")
    requests = [
        GenerationRequest(Image.new("RGB", (32 + 7 * i, 48), (60 * i, 90, 200)), prompt)
        for i in range(4)
    ]
    results = tiny_engine.generate(requests, max_new_tokens=budget, json_schema=PYDANTIC_INVOICE)
    assert [r.finished for r in results] == [True] * 4
    for result in results:
        assert result.tokens_out <= budget
        invoice = Invoice.model_validate_json(result.text)
        validate_output(PYDANTIC_INVOICE, json.loads(result.text))
        assert invoice.currency in ("EUR", "USD", "GBP") and len(invoice.lines) <= 2


def test_the_longest_output_fits_the_default_budget_in_the_tiny_tokenizer(
    llava_engine: TransformersEngine,
) -> None:
    longest = build_longest_text(prepare_schema(PYDANTIC_INVOICE))
    tokenizer = llava_engine._processor.tokenizer
    tokens = tokenizer(longest, add_special_tokens=False)["input_ids"]
    assert len(tokens) + 1 <= default_max_new_tokens(PYDANTIC_INVOICE)
