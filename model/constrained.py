"""Constrained JSON decoding with llguidance: a bounded schema becomes a grammar, and a logits
processor keeps every row of a batch inside its grammar.

Importing this module imports llguidance (a Rust extension with no Python dependencies, about
0.1 s) and never torch: ``model.schema`` compiles a schema with it in the CLI's process. torch
is imported only when a ``JsonLogitsProcessor`` is built, by the engine, which already has it.

The decoder writes JSON exactly as ``model.schema_size`` counts it: ``{"a": 1, "b": [1, 2]}``,
``": "`` after a key and ``", "`` between members and items, no other whitespace; strings that
need no escape (a free or patterned string never holds ``"``, ``\\``, a control character or
DEL, so each character of the output is one character of the value; ``enum`` values and keys
are written as ``json.dumps`` writes them); numbers with at most ``NUMBER_DECIMALS`` decimals
and no exponent; a ``pattern`` matched by the whole string (the validator then finds it too).
Masks are computed on the CPU in Rust and applied with plain torch operations, on CPU or CUDA
alike: no triton, no ``torch.compile``, no C compiler.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance

from model.errors import SchemaError
from model.schema_size import NUMBER_DECIMALS

if TYPE_CHECKING:
    import torch
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "DECODER_OPTIONS",
    "NUMBER_DECIMALS",
    "CompiledJson",
    "JsonLogitsProcessor",
    "build_json_grammar",
    "check_json_grammar",
    "compile_json",
    "compile_pattern",
]

logger = logging.getLogger(__name__)

# Compact JSON with one space after ":" and ", " between members and items (see above).
DECODER_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
# A character a JSON string holds without an escape (llguidance writes DEL as \u007f too).
_UNESCAPED = r'[^"\\\x00-\x1f\x7f]'


def build_json_grammar(bounded: Mapping[str, Any]) -> str:
    """The llguidance grammar for a bounded schema (``model.schema.prepare_schema``'s).

    The decoder's copy differs from the bounded schema in three ways, each of which only narrows
    it: every number gets ``multipleOf`` 10**-NUMBER_DECIMALS (llguidance's numbers otherwise
    take any number of decimals, so a confused model could write digits forever); every
    ``pattern`` is anchored at both ends (llguidance reads a pattern as JSON Schema does,
    matching anywhere in the string, which would leave the string's length open); and every
    string that is not an ``enum`` is kept to characters that need no escape.
    """
    decoder = copy.deepcopy(dict(bounded))
    _narrow(decoder)
    grammar: str = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(decoder, ensure_ascii=False), overrides=DECODER_OPTIONS
    )
    return grammar


def check_json_grammar(grammar: str, tokenizer: llguidance.LLTokenizer | None = None) -> None:
    """Raise ``SchemaError`` with llguidance's reason if ``grammar`` does not compile."""
    error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    if error:
        raise SchemaError(f"The decoder cannot compile the schema: {_one_line(error)}.")


@dataclass(frozen=True)
class CompiledJson:
    """A schema compiled for one tokenizer: a matcher at its start, which each row of a batch
    copies, and what the logits processor needs to know of the tokenizer."""

    matcher: Any  # llguidance.LLMatcher, never advanced itself
    vocab_size: int
    stop_tokens: tuple[int, ...]


def compile_json(bounded: Mapping[str, Any], tokenizer: llguidance.LLTokenizer) -> CompiledJson:
    """Compile the bounded schema over ``tokenizer``; ``SchemaError`` if it does not compile."""
    grammar = build_json_grammar(bounded)
    check_json_grammar(grammar, tokenizer)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        reason = _one_line(matcher.get_error())
        raise SchemaError(f"The decoder cannot compile the schema: {reason}.")
    return CompiledJson(matcher, tokenizer.vocab_size, tuple(tokenizer.eos_tokens))


def compile_pattern(pattern: str, tokenizer: llguidance.LLTokenizer) -> CompiledJson:
    """Compile a regular expression (llguidance's syntax) that the whole output must match;
    ``SchemaError`` if it does not compile. The logits processor takes it as it takes a schema:
    the row ends once the pattern is complete and nothing more can follow."""
    grammar: str = llguidance.LLMatcher.grammar_from_regex(pattern)
    check_json_grammar(grammar, tokenizer)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise SchemaError(
            f"The decoder cannot compile the pattern: {_one_line(matcher.get_error())}."
        )
    return CompiledJson(matcher, tokenizer.vocab_size, tuple(tokenizer.eos_tokens))


class JsonLogitsProcessor:
    """A transformers logits processor for one ``generate`` call: row ``i`` of the batch follows
    ``grammars[i]``, or is left free where that is None.

    On each step it first feeds every constrained row the token chosen at the step before, then
    masks each row's logits to the tokens its grammar allows next. A row whose grammar is
    complete allows only the end-of-sequence tokens; once it has ended, transformers pads it and
    the row is left alone. A row whose matcher fails (a token outside its grammar, which greedy
    decoding over the mask never chooses) is logged and allowed only end-of-sequence tokens, so
    it ends and its text fails validation as that item's error, never the batch's.
    """

    def __init__(self, grammars: Sequence[CompiledJson | None]) -> None:
        import torch

        sizes = {g.vocab_size for g in grammars if g is not None}
        if len(sizes) != 1:
            raise ValueError("a processor needs at least one grammar, all for one tokenizer")
        (self._vocab_size,) = sizes
        self._matchers = [None if g is None else g.matcher.deep_copy() for g in grammars]
        self._stop_tokens = [[] if g is None else list(g.stop_tokens) for g in grammars]
        words = (self._vocab_size + 31) // 32
        self._bitmask = torch.full((len(grammars), words), -1, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)
        self._done = [m is None for m in self._matchers]  # ended, or never constrained
        self._failed = [False] * len(grammars)
        self._started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = len(self._matchers)
        if input_ids.shape[0] != rows or scores.shape[0] != rows:
            raise ValueError(f"this processor is for a batch of {rows}, not {input_ids.shape[0]}")
        if scores.shape[1] != self._vocab_size:
            raise ValueError(f"logits of width {scores.shape[1]}, not {self._vocab_size}")
        if self._started:
            self._consume([int(t) for t in input_ids[:, -1].tolist()])
        self._started = True
        if all(self._done):
            return scores
        self._fill_masks()
        self._apply_masks(scores)
        return scores

    def _consume(self, tokens: list[int]) -> None:
        for row, matcher in enumerate(self._matchers):
            if matcher is None or self._done[row]:
                continue
            if matcher.is_stopped() or self._failed[row]:
                # Only end-of-sequence was allowed: the row has ended; padding follows.
                self._done[row] = True
            elif not matcher.consume_token(tokens[row]):
                self._failed[row] = True
                logger.warning(
                    "constrained decoding: row %d left its grammar (%s); ending the row",
                    row,
                    _one_line(matcher.get_error()),
                )

    def _fill_masks(self) -> None:
        self._bitmask.fill_(-1)  # free rows, ended ones (transformers pads them), failed ones
        width = self._bitmask.shape[1] * 4
        base = self._bitmask.data_ptr()
        for row, matcher in enumerate(self._matchers):
            if matcher is not None and not self._done[row] and not self._failed[row]:
                matcher.unsafe_compute_mask_ptr(base + row * width, width)

    def _apply_masks(self, scores: torch.Tensor) -> None:
        device = scores.device
        if self._bits.device != device:
            self._bits = self._bits.to(device)
        mask = self._bitmask.to(device)
        allowed = (mask.unsqueeze(-1) >> self._bits).bitwise_and(1).view(mask.shape[0], -1)
        scores.masked_fill_(allowed[:, : scores.shape[1]] == 0, float("-inf"))
        for row, failed in enumerate(self._failed):
            if failed and not self._done[row]:
                stops = self._stop_tokens[row]
                kept = scores[row, stops].clone()
                scores[row] = float("-inf")
                scores[row, stops] = kept


def _narrow(node: dict[str, Any]) -> None:
    """Apply ``build_json_grammar``'s two narrowings to a bounded (sub)schema, in place."""
    for branch in node.get("anyOf", []):
        _narrow(branch)
    raw = node.get("type", [])
    types = [raw] if isinstance(raw, str) else list(raw)
    if "number" in types:
        node["multipleOf"] = 10**-NUMBER_DECIMALS
    if "string" in types and "enum" not in node:
        if "pattern" in node:
            node["pattern"] = f"^(?:{node['pattern']})$"
            node["allOf"] = [{"pattern": f"^{_UNESCAPED}*$"}]  # both patterns hold
        else:
            # One regex for the length too: llguidance intersects a pattern with maxLength, and
            # an intersection in every free string makes masks several times slower on a
            # 32k-token vocabulary (bench/constrained.py).
            low, high = node.pop("minLength", 0), node.pop("maxLength", "")
            node["pattern"] = f"^{_UNESCAPED}{{{low},{high}}}$"
    if isinstance(node.get("items"), dict):
        _narrow(node["items"])
    for sub in node.get("properties", {}).values():
        _narrow(sub)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "unknown error"
