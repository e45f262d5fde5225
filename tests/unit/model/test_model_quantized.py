"""bitsandbytes 4-bit and 8-bit loading on the tiny model (its widths suit the CPU kernels)."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
from PIL import Image

from model.engine import EngineSpec, GenerationRequest
from model.transformers_engine import load_engine


@pytest.mark.parametrize(
    ("quantization", "layer_type"),
    [("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)],  # type: ignore[attr-defined]
)
@pytest.mark.parametrize("model_name", ["tiny-llava", "tiny-llava-next"])
def test_quantized_load_and_generate(
    tiny_cache: Path, quantization: str, layer_type: type, model_name: str
) -> None:
    engine = load_engine(
        EngineSpec(model=model_name, cache_dir=tiny_cache, device="cpu", quantization=quantization)
    )
    quantized = [m for m in engine._model.modules() if isinstance(m, layer_type)]
    assert quantized, f"no {layer_type.__name__} layers: the model was not quantised"
    requests = [
        GenerationRequest(Image.new("RGB", (40 + 10 * i, 30), (i * 60, 0, 0)), "describe " * i)
        for i in range(3)
    ]
    results = engine.generate(requests, max_new_tokens=6)
    assert len(results) == 3
    assert all(0 <= r.tokens_out <= 6 for r in results)
