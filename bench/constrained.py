"""Constrained JSON decoding: llguidance (the product's) against xgrammar (what it replaced).

    python bench/constrained.py [--reps 5] [--no-generate]    # features, compile, masks, output
    python bench/constrained.py --install-size [--workdir /tmp/llava-batch-sizes]

On the project's own schema corpus (the schemas the tests use: ``$ref``/``$defs``, ``anyOf``
with pydantic's ``Optional``, ``pattern``, ``format: date``, nested arrays, enums), for each
backend: whether it compiles ``prepare_schema(schema)``, the compile time, and the time per
token of a mask (computing the next-token mask and accepting the token, walking the longest
output the schema allows), on the tiny checkpoint's 512-token tokenizer and on a synthetic
32,000-token Llama-style tokenizer (byte fallback, letter and digit n-grams, JSON punctuation;
built offline). Then whether each backend reproduces the layout ``model.schema_size`` counts
and the subset's rules (full-match patterns, six decimals, free strings without escapes), and
unless ``--no-generate``, whether every output of the random tiny models, constrained by each
backend through the engine, is finished and valid.

``--install-size`` creates two throwaway virtual environments and installs the project's
runtime dependencies (``pyproject.toml``, torch pinned to the CPU build CI uses) with xgrammar
0.2.8 in one and llguidance in the other, then prints each ``site-packages`` size and its
biggest packages. The comparison needs xgrammar next to the project (``pip install
xgrammar==0.2.8``); without it, its rows are left out.

Recorded on the development container (shared CPU, Python 3.11, torch 2.13.0+cpu, llguidance
1.9.1, xgrammar 0.2.8; medians of 7, timings noisy):

- both backends compile all six schemas, except xgrammar with its compile cache on (as the
  product used it) on ``^a+|b$``, a pattern of the subset: "Check failed:
  per_rule_fsm_hashes[...]" (with the cache off it compiles);
- compile: llguidance 0.7-9 ms on either tokenizer; xgrammar 3-52 ms (512 tokens) and
  39-2077 ms (32k tokens);
- mask per token, 32k tokens: llguidance 13-60 µs (130 µs for the short strings of "refs"),
  xgrammar 8-560 µs (165 µs on "refs"); 512 tokens: 3-7 µs against 4-74 µs;
- layout: both write exactly what ``model.schema_size`` counts (every case above);
- the random tiny models: every output finished and valid with llguidance (48 of 48 rows);
  xgrammar 39 of 40 (8 rows not run: the crash above); generation times are too noisy on a
  shared CPU to compare (at best about 3.5 ms a step for either);
- install (``--install-size``): site-packages 2338 MB with xgrammar, of which triton 999 MB;
  1331 MB with llguidance (8 MB): 1007 MB less, no triton.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jsonschema  # noqa: E402

from model.constrained import build_json_grammar  # noqa: E402
from model.patterns import build_pattern_example  # noqa: E402
from model.schema import prepare_schema, validate_output  # noqa: E402

LLGUIDANCE_SPEC = "llguidance>=1.9.1,<2"
XGRAMMAR_SPEC = "xgrammar==0.2.8"
TORCH_SPEC = "torch==2.13.0"


# -- the corpus ------------------------------------------------------------------------------


def build_corpus() -> dict[str, dict[str, Any]]:
    """The schemas of the project's tests (tests/unit/model/test_model_schema.py) and of
    docs/kinds/extract.md."""
    import datetime
    from typing import Literal

    from pydantic import BaseModel, Field

    class Address(BaseModel):
        city: str = Field(max_length=20, description="City name")
        postcode: str | None = Field(default=None, pattern=r"^\d{5}$")

    class Line(BaseModel):
        item: str = Field(max_length=16, description="What was sold")
        quantity: int = Field(ge=1, le=99)
        unit_price: float | None = Field(default=None, ge=0, le=10000)

    class Invoice(BaseModel):
        vendor: str = Field(max_length=24, description="Name of the seller")
        number: str = Field(pattern=r"^INV-\d+$", max_length=10, description="Invoice number")
        date: datetime.date | None = Field(default=None, description="Issue date")
        currency: Literal["EUR", "USD", "GBP"]
        total: float = Field(ge=0, le=100000)
        paid: bool | None = None
        seller: Address = Field(description="Seller address")
        billing: Address | None = None
        lines: list[Line] = Field(max_length=2)

    class Note(BaseModel):
        text: str | None = None
        tags: list[str] | None = None
        amount: float | None = Field(default=None, gt=0)

    invoice = {
        "type": "object",
        "properties": {
            "vendor": {"type": "string"},
            "number": {"type": "string", "maxLength": 12},
            "date": {"type": "string", "format": "date"},
            "currency": {"enum": ["EUR", "USD", "GBP"]},
            "total": {"type": "number", "minimum": 0, "maximum": 100000},
            "paid": {"type": "boolean"},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "postcode": {"type": ["string", "null"], "maxLength": 8},
                },
                "required": ["city"],
            },
            "lines": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "item": {"type": "string", "maxLength": 16},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                    },
                    "required": ["item", "quantity"],
                },
            },
        },
        "required": ["vendor", "number", "date", "currency", "total", "address", "lines"],
    }
    refs = {
        "$ref": "#/definitions/Doc",
        "definitions": {
            "Doc": {
                "type": "object",
                "properties": {
                    "who": {"$ref": "#/definitions/Name"},
                    "also": {"type": "array", "items": {"$ref": "#/definitions/Name"}},
                },
            },
            "Name": {"type": "string", "maxLength": 9},
        },
    }
    patterns = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "[A-Z]{3}"},  # unanchored
            "either": {"type": "string", "pattern": r"^a+|b$"},
            "sku": {"type": "string", "pattern": r"^(?:[a-z]+\.)*[a-z]+$", "maxLength": 40},
            "kind": {"const": "invoice"},
            "grid": {
                "type": "array",
                "maxItems": 3,
                "items": {"type": "array", "maxItems": 3, "items": {"type": "integer"}},
            },
        },
        "required": ["code", "either", "sku", "kind", "grid"],
    }
    return {
        "invoice": invoice,
        "pydantic": Invoice.model_json_schema(),
        "optional": Note.model_json_schema(),
        "refs": refs,
        "patterns": patterns,
        "docs": _read_docs_schema(),
    }


def _read_docs_schema() -> dict[str, Any]:
    """The example of docs/kinds/extract.md's "Writing a schema"."""
    import re

    text = (ROOT / "docs" / "kinds" / "extract.md").read_text(encoding="utf-8")
    after = text[text.index("\n## Writing a schema\n") :]
    block = re.search(r"```json\n(.*?)```", after, re.DOTALL)
    assert block is not None
    schema: dict[str, Any] = json.loads(block.group(1))
    return schema


def build_longest_text(node: Mapping[str, Any]) -> str:
    """The longest JSON text a bounded schema allows, as the decoder writes it."""
    if "anyOf" in node:
        return max((build_longest_text(b) for b in node["anyOf"]), key=len)
    if "enum" in node:
        return max((json.dumps(v) for v in node["enum"]), key=len)
    raw = node["type"]
    kinds = [raw] if isinstance(raw, str) else raw
    return max((_longest_of(node, kind) for kind in kinds), key=len)


def _longest_of(node: Mapping[str, Any], kind: str) -> str:
    if kind == "string":
        if "pattern" in node:
            return json.dumps(build_pattern_example(node["pattern"], longest=True))
        return json.dumps("W" * node["maxLength"])
    if kind in ("number", "integer"):
        bounds = [(node[k], k) for k in ("minimum", "maximum") if k in node]
        bounds += [(node[k], k) for k in ("exclusiveMinimum", "exclusiveMaximum") if k in node]
        bound, key = max(bounds, key=lambda b: len(str(int(b[0]))))
        if key.startswith("exclusive"):  # one step inside the bound
            step = 1 if key == "exclusiveMinimum" else -1
            if kind == "integer":
                return str(int(bound) + step)
            whole = int(bound) if step > 0 else int(bound) - 1
            return f"{whole}.{'000001' if step > 0 else '999999'}"
        return str(int(bound)) + (".000000" if kind == "number" else "")
    if kind == "array":
        return "[" + ", ".join([build_longest_text(node["items"])] * node["maxItems"]) + "]"
    if kind == "object":
        members = [
            f"{json.dumps(k)}: {build_longest_text(v)}" for k, v in node["properties"].items()
        ]
        return "{" + ", ".join(members) + "}"
    return "false" if kind == "boolean" else "null"


# -- tokenizers ------------------------------------------------------------------------------


def build_tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from model.tiny import ensure_tiny_checkpoint

    cache = Path(tempfile.gettempdir()) / "llava-batch-bench-tiny"
    return AutoTokenizer.from_pretrained(ensure_tiny_checkpoint(cache, "tiny-llava"))


def build_llama_like_tokenizer(size: int = 32000) -> Any:
    """A Llama-style fast tokenizer of ``size`` tokens, offline: <unk> <s> </s>, the 256 byte
    fallback tokens, then JSON punctuation, digits and letter n-grams with and without the
    "▁" word prefix, as a real SentencePiece vocabulary is made of, with merges that build
    each token from two shorter ones."""
    import itertools
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        if token not in vocab and len(vocab) < size:
            vocab[token] = len(vocab)

    for token in ("<unk>", "<s>", "</s>"):
        add(token)
    for byte in range(256):
        add(f"<0x{byte:02X}>")
    punct = ['"', ":", ",", "{", "}", "[", "]", "-", ".", "▁", '":', '",', '{"', '"}', '["', '"]']
    punct += ['▁"', '▁{"', "▁[", "▁{", "▁-", '":▁', '",▁"', "},▁{", "],▁[", "null", "true"]
    for token in punct:
        add(token)
    for char in string.printable.strip() + "éèàüößçñ€£":
        add(char)
        add("▁" + char)
    for n in (2, 3):
        for digits in itertools.product(string.digits, repeat=n):
            add("".join(digits))
    letters = string.ascii_lowercase
    for n in (2, 3, 4):
        for gram in itertools.product(letters, repeat=n):
            word = "".join(gram)
            add("▁" + word)
            add(word)
            add("▁" + word.capitalize())
            if len(vocab) >= size:
                break
        if len(vocab) >= size:
            break
    merges = []  # each multi-character token from two earlier ones, shortest first
    for token in sorted(vocab, key=lambda t: (len(t), vocab[t])):
        if len(token) < 2 or token.startswith("<"):
            continue
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
                break
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


# -- the backends ----------------------------------------------------------------------------


class Llguidance:
    name = "llguidance"

    def __init__(self, hf_tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf

        self._llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=len(hf_tokenizer))
        self.vocab = len(hf_tokenizer)

    def compile(self, bounded: Mapping[str, Any]) -> Any:
        grammar = build_json_grammar(bounded)
        error = self._llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        matcher = self._llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def tokens(self, text: str) -> list[int]:
        tokens: list[int] = self.tokenizer.tokenize_str(text)
        return tokens

    def walk(self, compiled: Any, tokens: list[int]) -> tuple[bool, float]:
        """(accepted, seconds): a mask for every position, then each token consumed."""
        import torch

        matcher = compiled.deep_copy()
        mask = torch.full((1, (self.vocab + 31) // 32), -1, dtype=torch.int32)
        ptr, nbytes = mask.data_ptr(), mask.shape[1] * 4
        start = time.perf_counter()
        for token in tokens:
            matcher.unsafe_compute_mask_ptr(ptr, nbytes)
            if not matcher.consume_token(token):
                return False, time.perf_counter() - start
        matcher.unsafe_compute_mask_ptr(ptr, nbytes)
        seconds = time.perf_counter() - start
        return matcher.is_accepting() and not matcher.is_error(), seconds

    def accepts(self, bounded: Mapping[str, Any], text: str) -> bool:
        """Whether the grammar accepts ``text``, byte by byte (whatever the tokenizer)."""
        matcher = self._llg.LLMatcher(_byte_tokenizer(), build_json_grammar(bounded), log_level=0)
        data = list(text.encode())
        ok: bool = matcher.try_consume_tokens(data) == len(data) and matcher.is_accepting()
        return ok


def _byte_tokenizer() -> Any:
    """An llguidance tokenizer with one token per byte (and an end of sequence)."""
    import llguidance

    class Bytes:
        eos_token_id = 256
        bos_token_id = None
        tokens: ClassVar = [bytes([i]) for i in range(256)] + [b"</s>"]
        special_token_ids: ClassVar = [256]

        def __call__(self, text: bytes | str) -> list[int]:
            return list(text if isinstance(text, bytes) else text.encode())

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Bytes()))


class Xgrammar:
    name = "xgrammar"

    def __init__(self, hf_tokenizer: Any) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=len(hf_tokenizer)
        )
        self.vocab = len(hf_tokenizer)
        self._hf = hf_tokenizer

    def compile(self, bounded: Mapping[str, Any]) -> Any:
        compiler = self._xgr.GrammarCompiler(self.info, cache_enabled=False)
        return compiler.compile_json_schema(
            json.dumps(bounded), any_whitespace=False, strict_mode=True
        )

    def walk(self, compiled: Any, tokens: list[int]) -> tuple[bool, float]:
        matcher = self._xgr.GrammarMatcher(compiled)
        mask = self._xgr.allocate_token_bitmask(1, self.vocab)
        start = time.perf_counter()
        for token in tokens:
            matcher.fill_next_token_bitmask(mask)
            if not matcher.accept_token(token):
                return False, time.perf_counter() - start
        matcher.fill_next_token_bitmask(mask)
        seconds = time.perf_counter() - start
        return matcher.is_completed() or matcher.accept_token(self.info.stop_token_ids[0]), seconds

    def accepts(self, bounded: Mapping[str, Any], text: str) -> bool:
        from xgrammar.testing import _is_grammar_accept_string

        grammar = self._xgr.Grammar.from_json_schema(
            json.dumps(bounded), any_whitespace=False, strict_mode=True
        )
        return bool(_is_grammar_accept_string(grammar, text))


def backends(hf_tokenizer: Any) -> list[Any]:
    found: list[Any] = [Llguidance(hf_tokenizer)]
    try:
        found.append(Xgrammar(hf_tokenizer))
    except ImportError:
        print("xgrammar is not installed: its columns are skipped", file=sys.stderr)
    return found


# -- measurements ----------------------------------------------------------------------------


def measure(tokenizer_name: str, hf_tokenizer: Any, reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    corpus = build_corpus()
    for backend in backends(hf_tokenizer):
        llg = Llguidance(hf_tokenizer) if backend.name != "llguidance" else backend
        for name, schema in corpus.items():
            bounded = prepare_schema(schema)
            row: dict[str, Any] = {"tokenizer": tokenizer_name, "backend": backend.name}
            row["schema"] = name
            try:
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    compiled = backend.compile(bounded)
                    times.append(time.perf_counter() - start)
            except Exception as exc:  # a backend's refusal is the result
                row.update(compiles=False, error=str(exc).splitlines()[0][:80])
                rows.append(row)
                continue
            row.update(compiles=True, compile_ms=1000 * statistics.median(times))
            longest = build_longest_text(bounded)
            validate_output(schema, json.loads(longest))
            tokens = llg.tokens(longest)
            walks = [backend.walk(compiled, tokens) for _ in range(reps)]
            row["walk_ok"] = all(ok for ok, _ in walks)
            row["tokens"] = len(tokens)
            row["mask_us"] = 1e6 * statistics.median(s for _, s in walks) / (len(tokens) + 1)
            rows.append(row)
    return rows


# What each backend must accept (True) or refuse (False) for the subset's rules to hold:
# compact separators, six decimals, no exponent, no escapes, a pattern matched whole.
LAYOUT_CASES: list[tuple[str, dict[str, Any], str, bool]] = [
    (
        "compact separators",
        {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "integer"}}},
        '{"a": 1, "b": [1, 2]}',
        True,
    ),
    (
        "no other whitespace",
        {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "integer"}}},
        '{"a":1,"b":[1,2]}',
        False,
    ),
    ("six decimals", {"x": {"type": "number"}}, '{"x": 1.123456}', True),
    ("seven decimals", {"x": {"type": "number"}}, '{"x": 1.1234567}', False),
    ("an exponent", {"x": {"type": "number"}}, '{"x": 1e3}', False),
    ("an escaped quote", {"s": {"type": "string"}}, '{"s": "a\\"b"}', False),
    ("an escaped newline", {"s": {"type": "string"}}, '{"s": "a\\nb"}', False),
    ("DEL, written \\u007f", {"s": {"type": "string"}}, '{"s": "a\\u007f"}', False),
    ("an enum value with a quote", {"e": {"enum": ['a"b']}}, '{"e": "a\\"b"}', True),
    (
        "pattern [A-Z]{3} whole",
        {"s": {"type": "string", "pattern": "[A-Z]{3}"}},
        '{"s": "ABC"}',
        True,
    ),
    (
        "pattern [A-Z]{3} inside",
        {"s": {"type": "string", "pattern": "[A-Z]{3}"}},
        '{"s": "xABCx"}',
        False,
    ),
]


def check_layout(hf_tokenizer: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for backend in backends(hf_tokenizer):
        for label, properties, text, expected in LAYOUT_CASES:
            schema = {"type": "object", "properties": properties, "required": list(properties)}
            bounded = prepare_schema(schema)
            got = backend.accepts(bounded, text)
            rows.append(
                {"backend": backend.name, "case": label, "text": text, "ok": got == expected}
            )
    return rows


def generate_outputs(reps: int) -> list[dict[str, Any]]:
    """Each backend constrains the random tiny models on the corpus: finished and valid?"""
    from PIL import Image

    import model.transformers_engine as engine_module
    from model.engine import EngineSpec, GenerationRequest
    from model.schema import build_extraction_prompt, default_max_new_tokens
    from model.transformers_engine import load_engine

    cache = Path(tempfile.gettempdir()) / "llava-batch-bench-tiny"
    rows: list[dict[str, Any]] = []
    corpus = build_corpus()
    for flavour in ("tiny-llava", "tiny-llava-next"):
        engine = load_engine(EngineSpec(model=flavour, cache_dir=cache, device="cpu"))
        for backend in ("llguidance", "xgrammar"):
            restore = _use_xgrammar(engine, engine_module) if backend == "xgrammar" else None
            if backend == "xgrammar" and restore is None:
                continue
            try:
                for name, schema in corpus.items():
                    prompt = build_extraction_prompt(schema, "Read the document.")
                    room = engine.max_context - engine.count_prompt_tokens(prompt)
                    budget = default_max_new_tokens(schema, cap=room)
                    requests = [
                        GenerationRequest(
                            Image.new("RGB", (32 + 7 * i, 48), (60 * i, 90, 200)), prompt
                        )
                        for i in range(4)
                    ]
                    start = time.perf_counter()
                    try:
                        results = engine.generate(
                            requests, max_new_tokens=budget, json_schema=schema
                        )
                    except Exception as exc:  # a backend's failure is the result
                        reason = str(exc).strip().splitlines()[0][:70]
                        rows.append(
                            {"model": flavour, "backend": backend, "schema": name, "error": reason}
                        )
                        continue
                    seconds = time.perf_counter() - start
                    valid = 0
                    for result in results:
                        try:
                            validate_output(schema, json.loads(result.text))
                            valid += result.finished
                        except (json.JSONDecodeError, jsonschema.ValidationError):
                            pass
                    tokens = sum(r.tokens_out for r in results)
                    rows.append(
                        {
                            "model": flavour,
                            "backend": backend,
                            "schema": name,
                            "valid": f"{valid}/{len(results)}",
                            "tokens": tokens,
                            "seconds": seconds,
                        }
                    )
            finally:
                if restore is not None:
                    restore()
    return rows


def _use_xgrammar(engine: Any, engine_module: Any) -> Callable[[], None] | None:
    """Swap the engine's grammar backend for xgrammar's (its HF logits processor), for the
    comparison only; returns the function that swaps it back, or None without xgrammar."""
    try:
        import xgrammar
        from xgrammar.contrib.hf import LogitsProcessor
    except ImportError:
        return None
    info = xgrammar.TokenizerInfo.from_huggingface(
        engine._processor.tokenizer,
        vocab_size=engine._logits_width(),
        stop_token_ids=engine._eos_ids,
    )
    compiler = xgrammar.GrammarCompiler(info)

    def grammar_for(schema: Mapping[str, Any]) -> Any:
        return compiler.compile_json_schema(
            json.dumps(prepare_schema(schema)), any_whitespace=False, strict_mode=True
        )

    original = engine_module.JsonLogitsProcessor
    engine._grammar_for = grammar_for
    engine_module.JsonLogitsProcessor = lambda grammars: LogitsProcessor(grammars[0])

    def restore() -> None:
        del engine._grammar_for
        engine_module.JsonLogitsProcessor = original

    return restore


# -- install size ----------------------------------------------------------------------------


def measure_install_size(workdir: Path) -> None:
    """Two virtual environments: the runtime dependencies with xgrammar, then with llguidance."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = [
        d for d in project["dependencies"] if not d.startswith(("torch", "xgrammar", "llguidance"))
    ]
    for backend in (XGRAMMAR_SPEC, LLGUIDANCE_SPEC):
        env = workdir / backend.split("=")[0].split(">")[0]
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_SPEC], check=True)
        subprocess.run([*pip, *runtime, backend, TORCH_SPEC], check=True)
        (site,) = env.glob("lib/python*/site-packages")
        sizes = _sizes_mb(site)
        du = subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True, check=True)
        total = int(du.stdout.split()[0])  # the sum of sizes rounds each entry up
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
        print(f"{backend}: site-packages {total} MB")
        for name, mb in biggest:
            print(f"    {name:<20} {mb:>6} MB")
        for name in ("triton", "xgrammar", "tvm_ffi", "llguidance"):
            if name in sizes:
                print(f"    ({name}: {sizes[name]} MB)")


def _sizes_mb(site: Path) -> dict[str, int]:
    out = subprocess.run(
        ["du", "-sm", *[str(p) for p in site.iterdir()]], capture_output=True, text=True
    ).stdout
    sizes = {}
    for line in out.splitlines():
        mb, path = line.split("\t", 1)
        sizes[Path(path).name] = int(mb)
    return sizes


# -- report ----------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    widths = {c: max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(cell(row.get(c, "")).ljust(widths[c]) for c in columns))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--install-size", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llava-batch-sizes"))
    args = parser.parse_args()
    if args.install_size:
        measure_install_size(args.workdir)
        return
    columns = ["tokenizer", "backend", "schema", "compiles", "compile_ms", "tokens", "mask_us"]
    columns += ["walk_ok", "error"]
    rows: list[dict[str, Any]] = []
    tiny = build_tiny_tokenizer()
    rows += measure("tiny-512", tiny, args.reps)
    rows += measure("llama-32k", build_llama_like_tokenizer(), args.reps)
    print("== features, compile time, mask time per token (median of --reps)")
    print_table(rows, columns)
    print("== the layout model.schema_size counts, and the subset's rules")
    print_table(check_layout(tiny), ["backend", "case", "text", "ok"])
    if not args.no_generate:
        print(
            "== the random tiny models, 4 rows per schema, each schema's default budget "
            "(seconds: the whole generate call, first compile and prefill included)"
        )
        print_table(
            generate_outputs(args.reps),
            ["model", "backend", "schema", "valid", "tokens", "seconds", "error"],
        )


if __name__ == "__main__":
    main()
