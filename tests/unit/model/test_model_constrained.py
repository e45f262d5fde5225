"""model.constrained: the decoder writes what model.schema_size counts, and its logits processor
keeps each row of a batch inside its own grammar (llguidance, CPU, no model)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
import torch
from test_model_schema import (
    BYTES,
    INVOICE,
    PYDANTIC_INVOICE,
    ROOT,
    build_longest_text,
    grammar_accepts,
    read_docs_schema,
)

from model.constrained import CompiledJson, JsonLogitsProcessor, compile_json
from model.errors import SchemaError
from model.schema import (
    check_schema_compiles,
    longest_output_chars,
    prepare_schema,
    validate_output,
)

EOS = 256


def _one(name: str, sub: dict[str, Any]) -> dict[str, Any]:
    return prepare_schema({"type": "object", "properties": {name: sub}, "required": [name]})


@pytest.mark.parametrize(
    ("sub", "text", "accepted"),
    [
        # The layout model.schema_size counts: ": " and ", ", nothing else.
        ({"type": "array", "items": {"type": "integer"}}, '{"a": [1, 2]}', True),
        ({"type": "array", "items": {"type": "integer"}}, '{"a":[1,2]}', False),
        ({"type": "array", "items": {"type": "integer"}}, '{"a": [1,2]}', False),
        ({"type": "array", "items": {"type": "integer"}}, '{ "a": [1, 2]}', False),
        # Numbers: six decimals at most, no exponent, the bounds exact.
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 99.123456}', True),
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 99.1234567}', False),
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 1.5000000}', False),
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 1e2}', False),
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 100.000000}', True),
        ({"type": "number", "minimum": 0, "maximum": 100}, '{"a": 100.000001}', False),
        ({"type": "integer", "minimum": -(10**18)}, '{"a": -1000000000000000000}', True),
        ({"type": "integer", "minimum": -(10**18)}, '{"a": -1000000000000000001}', False),
        # Free strings: no escapes, so no quote, backslash, control character or DEL.
        ({"type": "string", "maxLength": 3}, '{"a": "abc"}', True),
        ({"type": "string", "maxLength": 3}, '{"a": "abcd"}', False),
        ({"type": "string", "maxLength": 3}, '{"a": "é€x"}', True),
        ({"type": "string", "maxLength": 3}, '{"a": "a\\"b"}', False),
        ({"type": "string", "maxLength": 3}, '{"a": "a\\\\b"}', False),
        ({"type": "string", "maxLength": 3}, '{"a": "a\\nb"}', False),
        ({"type": "string", "maxLength": 3}, '{"a": "\\u007f"}', False),
        # Enum values are written as json.dumps writes them, escapes included.
        ({"enum": ['say "hi"', "two\nlines"]}, '{"a": "say \\"hi\\""}', True),
        ({"enum": ['say "hi"', "two\nlines"]}, '{"a": "two\\nlines"}', True),
        # A pattern is matched by the whole string, whatever its anchors.
        ({"type": "string", "pattern": "[A-Z]{3}"}, '{"a": "ABC"}', True),
        ({"type": "string", "pattern": "[A-Z]{3}"}, '{"a": "xABCx"}', False),
        ({"type": "string", "pattern": r"^a+|b$"}, '{"a": "aa"}', True),
        ({"type": "string", "pattern": r"^a+|b$"}, '{"a": "ab"}', False),
        ({"type": "string", "pattern": r"^\d{2}$"}, '{"a": "١٢"}', False),  # \d is ASCII
        ({"type": "string", "pattern": r"^.{2}$"}, '{"a": "a\\"b"}', False),
        ({"type": "string", "format": "date"}, '{"a": "2024-02-29"}', True),
        ({"type": "string", "format": "date"}, '{"a": "2023-02-29"}', False),
        ({"type": ["string", "null"], "maxLength": 2}, '{"a": null}', True),
    ],
)
def test_the_decoder_writes_what_the_size_model_counts(
    sub: dict[str, Any], text: str, accepted: bool
) -> None:
    assert grammar_accepts(_one("a", sub), text) is accepted


@pytest.mark.parametrize("name", ["invoice", "pydantic", "readme"])
def test_the_longest_output_of_each_test_schema_is_accepted_and_counted(name: str) -> None:
    schema = {"invoice": INVOICE, "pydantic": PYDANTIC_INVOICE}.get(name) or read_docs_schema()
    check_schema_compiles(schema)  # $ref/$defs, anyOf, pattern, format date, nested arrays
    bounded = prepare_schema(schema)
    longest = build_longest_text(bounded)
    validate_output(schema, json.loads(longest))
    assert grammar_accepts(bounded, longest)
    assert len(longest) == longest_output_chars(bounded)
    assert not grammar_accepts(bounded, longest.replace(": ", ":", 1))


@pytest.mark.parametrize(
    "sub",
    [
        {"type": "string", "pattern": '^"$'},  # every match needs an escape
        {"type": "number", "minimum": 0.0000001, "maximum": 0.0000002},  # no six-decimal number
    ],
)
def test_a_schema_the_decoder_cannot_build_is_a_schema_error(sub: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"q": sub}, "required": ["q"]}
    with pytest.raises(SchemaError, match=r"The decoder cannot compile the schema: .*'q'"):
        compile_json(prepare_schema(schema), BYTES)
    with pytest.raises(SchemaError, match="The decoder cannot compile the schema"):
        check_schema_compiles(schema)


def _decode(
    processor: JsonLogitsProcessor, rows: int, seed: int, steps: int = 400
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy decoding over random logits, as transformers does it: a row that has ended gets
    the pad token (EOS here) from then on. Returns each row's tokens and each step's scores."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros((rows, 1), dtype=torch.long)
    ended = torch.zeros(rows, dtype=torch.bool)
    seen = []
    for _ in range(steps):
        scores = torch.randn((rows, EOS + 1), generator=generator)
        seen.append(scores.clone())
        chosen = processor(ids, scores).argmax(dim=-1)
        chosen = torch.where(ended, torch.full_like(chosen, EOS), chosen)
        ids = torch.cat([ids, chosen[:, None]], dim=1)
        ended |= chosen == EOS
        if bool(ended.all()):
            break
    return [row[1:] for row in ids.tolist()], seen


def _text(tokens: list[int]) -> str:
    end = tokens.index(EOS) if EOS in tokens else len(tokens)
    return bytes(tokens[:end]).decode()


@pytest.mark.parametrize("seed", range(5))
def test_each_row_of_a_batch_follows_its_own_grammar_or_none(seed: int) -> None:
    note = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 4}},
            "score": {"anyOf": [{"type": "number", "minimum": -5, "maximum": 5}, {"type": "null"}]},
            "code": {"type": "string", "pattern": "[A-Z]{2}-[0-9]+"},
        },
        "required": ["tags", "score", "code"],
    }
    first = compile_json(prepare_schema(PYDANTIC_INVOICE), BYTES)
    second = compile_json(prepare_schema(note), BYTES)
    processor = JsonLogitsProcessor([first, None, second, first])
    rows, seen = _decode(processor, 4, seed)
    for row, schema in ((0, PYDANTIC_INVOICE), (2, note), (3, PYDANTIC_INVOICE)):
        assert EOS in rows[row], f"row {row} never ended"
        text = _text(rows[row])
        validate_output(schema, json.loads(text))
        assert len(text) <= longest_output_chars(prepare_schema(schema))
    # The free row is left alone: its scores are never masked.
    assert all(not torch.isinf(scores[1]).any() for scores in seen)
    # One compiled grammar serves many rows and many calls: it is copied, never advanced.
    again, _ = _decode(JsonLogitsProcessor([first, None, second, first]), 4, seed)
    assert again == rows


def test_a_row_that_leaves_its_grammar_is_ended_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grammar = compile_json(prepare_schema(INVOICE), BYTES)
    processor = JsonLogitsProcessor([grammar, grammar])
    scores = torch.zeros((2, EOS + 1))
    masked = processor(torch.zeros((2, 1), dtype=torch.long), scores)
    assert masked[0].isfinite().sum() == 1 and masked[0, ord("{")] == 0  # only "{" may start
    # Row 1 writes "x" anyway (another processor, say); row 0 writes "{".
    ids = torch.tensor([[0, ord("{")], [0, ord("x")]])
    with caplog.at_level(logging.WARNING, logger="model.constrained"):
        masked = processor(ids, torch.zeros((2, EOS + 1)))
    assert "left its grammar" in caplog.text
    assert masked[0, ord('"')] == 0 and masked[0, ord("x")] == float("-inf")
    assert masked[1].isfinite().nonzero().flatten().tolist() == [EOS]
    # Once it has ended, the row is padded and left alone.
    ids = torch.cat([ids, torch.tensor([[ord('"')], [EOS]])], dim=1)
    masked = processor(ids, torch.zeros((2, EOS + 1)))
    assert masked[1].isfinite().all()


def test_a_processor_refuses_a_batch_or_vocabulary_it_was_not_built_for() -> None:
    grammar = compile_json(prepare_schema(INVOICE), BYTES)
    processor = JsonLogitsProcessor([grammar])
    with pytest.raises(ValueError, match="batch of 1"):
        processor(torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, EOS + 1)))
    with pytest.raises(ValueError, match="logits of width"):
        processor(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, EOS + 9)))
    with pytest.raises(ValueError, match="at least one grammar"):
        JsonLogitsProcessor([None])
    assert isinstance(grammar, CompiledJson) and grammar.stop_tokens == (EOS,)


def test_the_constrained_module_imports_no_torch() -> None:
    code = (
        "import sys, model.constrained\n"
        "print(','.join(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == ""
