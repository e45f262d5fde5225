"""Full-size random checkpoints (bench/fullsize.py): the published shapes, the physical-limit
arithmetic, and the GPU benchmark's plumbing, all without building 14 GB on a CPU.

The full configurations are checked on the meta device (no memory); a scaled-down variant built
by the same code (real tokenizer, image size and token counts; widths / 32, 2 layers) is built,
loaded by the project's loader and asked for a caption.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model.engine import EngineSpec, GenerationRequest
from model.transformers_engine import load_engine

ROOT = Path(__file__).resolve().parents[2]
# The bench's scripts import each other by name; their folder is on the path only to import them.
sys.path.insert(0, str(ROOT / "bench"))
try:
    from fullsize import build_fullsize_config, build_meta_model, ensure_fullsize_checkpoint, main
    from fullsize_arch import FLAVOURS, count_parameters, scale_architecture
    from fullsize_limits import GPUS, find_gpu, image_cost, physical_limit
    from throughput_gpu import Measured, best_batch_sizes, parse_batch_sizes
finally:
    sys.path.remove(str(ROOT / "bench"))

# Published parameter counts (the hub pages say 7.06B and 7.57B).
PUBLISHED = {"llava-1.5-7b": 7_063_427_072, "llava-next-mistral-7b": 7_566_747_648}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def fullsize_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fullsize-cache")


def _scaled(cache: Path, flavour: str) -> Path:
    return ensure_fullsize_checkpoint(cache, flavour, divisor=32, layers=2, shard_bytes=4 * 2**20)


# --- the published shapes, on the meta device ------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(PUBLISHED))
def test_meta_model_has_the_published_parameter_count(flavour: str) -> None:
    model = build_meta_model(FLAVOURS[flavour])
    assert all(p.device.type == "meta" for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert total == PUBLISHED[flavour] == count_parameters(FLAVOURS[flavour])["total"]


def test_llava_1_5_shapes_and_config_match_the_published_config() -> None:
    arch = FLAVOURS["llava-1.5-7b"]
    shapes = {k: tuple(v.shape) for k, v in build_meta_model(arch).state_dict().items()}
    text = "model.language_model."
    assert shapes[text + "embed_tokens.weight"] == (32064, 4096)
    assert shapes["lm_head.weight"] == (32064, 4096)
    assert shapes[text + "layers.31.self_attn.k_proj.weight"] == (4096, 4096)  # no grouped KV
    assert shapes[text + "layers.0.mlp.gate_proj.weight"] == (11008, 4096)
    assert text + "layers.32.mlp.gate_proj.weight" not in shapes
    assert shapes["model.vision_tower.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["model.vision_tower.embeddings.position_embedding.weight"] == (577, 1024)
    assert shapes["model.multi_modal_projector.linear_1.weight"] == (4096, 1024)
    config: Any = build_fullsize_config(arch)  # sub-configs are loosely typed
    assert config.image_token_index == 32000
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == 576 == arch.image_tokens
    assert config.text_config.pad_token_id == 32001
    assert config.vision_config.hidden_act == "quick_gelu"


def test_llava_next_mistral_shapes_and_config() -> None:
    arch = FLAVOURS["llava-next-mistral-7b"]
    shapes = {k: tuple(v.shape) for k, v in build_meta_model(arch).state_dict().items()}
    text = "model.language_model."
    assert shapes[text + "layers.0.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads
    assert shapes[text + "layers.0.mlp.up_proj.weight"] == (14336, 4096)
    assert shapes["model.image_newline"] == (4096,)
    config: Any = build_fullsize_config(arch)  # sub-configs are loosely typed
    assert config.image_grid_pinpoints == [
        [336, 672],
        [672, 336],
        [672, 672],
        [1008, 336],
        [336, 1008],
    ]
    assert config.text_config.model_type == "mistral"
    assert config.text_config.sliding_window is None
    assert config.text_config.max_position_embeddings == 32768
    assert config.text_config.rope_parameters["rope_theta"] == 1e6
    assert arch.image_tokens == 2880  # base view + 2x2 tiles, before unpadding


def test_scaling_keeps_the_token_side_real() -> None:
    arch = scale_architecture(FLAVOURS["llava-next-mistral-7b"], divisor=32, layers=2)
    assert arch.scaled and arch.text.layers == arch.vision.layers == 2
    assert (arch.text.hidden, arch.vision.hidden) == (128, 64)
    assert arch.text.vocab == 32064 and arch.image_tokens == 2880
    assert arch.grid_pinpoints == FLAVOURS["llava-next-mistral-7b"].grid_pinpoints
    with pytest.raises(ValueError, match="at least 2"):
        scale_architecture(arch, layers=1)


# --- FLOPs and the physical limit ------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(PUBLISHED))
def test_prefill_flops_per_token_come_from_the_real_linear_layers(flavour: str) -> None:
    arch = FLAVOURS[flavour]
    layers = build_meta_model(arch).model.language_model.layers
    linear = sum(p.numel() for name, p in layers.named_parameters() if "proj.weight" in name)
    short, longer = (image_cost(arch, prompt_tokens=n, new_tokens=1) for n in (600, 601))
    # One more prompt token adds its matmuls (2 FLOPs per weight) and its attention.
    extra_attention = 2 * arch.text.layers * (601**2 - 600**2) * arch.text.hidden
    assert longer.prefill_flops - short.prefill_flops == 2 * linear + extra_attention


def test_limits_reproduce_the_performance_anchors() -> None:
    """/work/shared/reference/performance-anchors.md §3: LLaVA-1.5-7B captioning on one H100
    is about 82 img/s overlapped and 54 img/s with the phases in sequence (9.6 TFLOP/image, the
    embedding counted as matmul work; this arithmetic leaves it out: 9.3)."""
    arch = FLAVOURS["llava-1.5-7b"]
    h100 = physical_limit(arch, GPUS["h100-sxm"], prompt_tokens=616, new_tokens=60)
    assert 9.0e12 < h100.cost.total_flops < 9.6e12
    assert h100.cost.kv_bytes_per_token == 2**19  # 0.5 MiB: 32 layers, 32 KV heads, fp16
    assert 160 < h100.batch < 180  # ~60 GB of KV at 0.35 GB per sequence
    assert 80 < h100.overlapped_items_per_s < 90
    assert 50 < h100.sequential_items_per_s < 60
    assert 110 < h100.prefill_peak_items_per_s < 120  # vision + prefill FLOPs ÷ 989 TFLOP/s
    h200 = physical_limit(arch, GPUS["h200"], prompt_tokens=616, new_tokens=60)
    assert h200.overlapped_items_per_s == pytest.approx(h100.overlapped_items_per_s)  # compute
    assert h200.sequential_items_per_s > h100.sequential_items_per_s  # faster HBM
    nxt = physical_limit(FLAVOURS["llava-next-mistral-7b"], GPUS["h100-sxm"])
    assert nxt.cost.vision_tiles == 5
    assert 15 < nxt.overlapped_items_per_s < 19  # anchors: 17.7 (Vicuna), ~15 in sequence
    nf4 = physical_limit(arch, GPUS["h100-sxm"], precision="4bit")
    assert nf4.cost.decode_weight_bytes < h100.cost.decode_weight_bytes / 3


def test_known_gpu_names() -> None:
    assert find_gpu("NVIDIA H100 80GB HBM3") is GPUS["h100-sxm"]
    assert find_gpu("NVIDIA H100 PCIe") is GPUS["h100-pcie"]
    assert find_gpu("NVIDIA H200") is GPUS["h200"]
    assert find_gpu("NVIDIA GeForce RTX 4090") is None


def test_cli_info_prints_counts_and_limits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--flavour", "llava-1.5-7b", "--info"]) == 0
    out = capsys.readouterr().out
    assert "7,063,427,072 parameters" in out
    assert "H100 SXM" in out and "H200" in out


# --- a scaled-down checkpoint, end to end ----------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(PUBLISHED))
def test_scaled_checkpoint_builds_loads_and_captions(fullsize_cache: Path, flavour: str) -> None:
    directory = _scaled(fullsize_cache, flavour)
    assert ensure_fullsize_checkpoint(fullsize_cache, flavour, divisor=32, layers=2) == directory
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    arch = scale_architecture(FLAVOURS[flavour], divisor=32, layers=2)
    expected = build_meta_model(arch).state_dict()
    assert set(index["weight_map"]) == set(expected)
    with safe_open(str(directory / shards[0]), framework="pt") as weights:
        name = next(iter(weights.keys()))
        assert weights.get_tensor(name).dtype == torch.float16
    engine = load_engine(EngineSpec(model=str(directory), device="cpu"))
    tokenizer = engine._processor.tokenizer
    assert len(tokenizer) == 32002
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    assert tokenizer("a photo")["input_ids"][0] == tokenizer.bos_token_id == 1
    image = Image.new("RGB", (640, 480), (200, 30, 30))
    [result] = engine.generate(
        [GenerationRequest(image, "Describe this image in one sentence.")], max_new_tokens=2
    )
    assert result.tokens_out == 2
    assert result.tokens_in > 576  # the image's tokens and the templated prompt
    if flavour == "llava-1.5-7b":
        assert result.tokens_in < 576 + 30


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_scaled_checkpoint_generates_on_cuda(fullsize_cache: Path, quantization: str) -> None:
    directory = _scaled(fullsize_cache, "llava-1.5-7b")
    spec = EngineSpec(
        model=str(directory), device="cuda", dtype="float16", quantization=quantization
    )
    engine = load_engine(spec)
    image = Image.new("RGB", (336, 336), (0, 90, 200))
    [result] = engine.generate([GenerationRequest(image, "Describe.")], max_new_tokens=2)
    assert result.tokens_out == 2


# --- bench/throughput.py --gpu ---------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_bench_gpu_without_cuda_exits_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "bench/throughput.py", "--gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no CUDA GPU is present" in result.stderr
    assert result.stdout == ""


def test_bench_gpu_check_runs_the_gpu_path_on_cpu(
    fullsize_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _scaled(fullsize_cache, "llava-1.5-7b")  # reused from the cache, not rebuilt
    results = tmp_path / "results.json"
    argv = ["--gpu", "--check", "--items", "2", "--batch-sizes", "1,2", "--max-new-tokens", "1"]
    argv += ["--precisions", "float32", "--checkpoint-cache", str(fullsize_cache)]
    argv += ["--json-out", str(results)]
    monkeypatch.setattr(sys, "argv", ["bench/throughput.py", *argv])
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the bench's scratch databases
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "bench" / "throughput.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "not a GPU figure" in out
    assert "(a) system" in out and "(b) raw" in out and "% of" in out
    document = json.loads(results.read_text())
    rows = document["results"]
    assert {(row["path"], row["batch_size"]) for row in rows} == {
        (path, size) for path in ("system", "raw") for size in (1, 2)
    }
    assert document["best_batch_size"]["float32"] in (1, 2)
    assert "float32 micro-batch that wins (system items/s): " in out
    for row in rows:
        assert row["items"] == 2 and row["tokens_out"] == 2
        assert row["tokens_in"] > 2 * 576
        assert 0 < row["share_of_limit"] < 1


def test_the_winning_micro_batch_is_the_system_path_s_fastest_for_each_precision() -> None:
    def row(precision: str, size: int, path: str, seconds: float) -> Measured:
        return Measured(precision, size, path, 64, seconds, 0, 0, None)

    measured = [
        row("bfloat16", 16, "system", 4.0),
        row("bfloat16", 32, "system", 2.0),
        row("bfloat16", 64, "system", 3.0),
        row("bfloat16", 64, "raw", 1.0),  # the raw path's speed does not choose
        row("4bit", 16, "system", 5.0),
        row("4bit", 32, "system", 6.0),
    ]
    assert best_batch_sizes(measured) == {"bfloat16": 32, "4bit": 16}


def test_bench_gpu_refuses_a_batch_size_list_that_is_not_of_positive_numbers() -> None:
    assert parse_batch_sizes(None, 32) == [32]
    assert parse_batch_sizes("16, 32,16,64", 32) == [16, 32, 64]
    for listed in ("8,x", "0,8", ",", "-1"):
        assert parse_batch_sizes(listed, 32) is None, listed
    result = subprocess.run(
        [sys.executable, "bench/throughput.py", "--gpu", "--check", "--batch-sizes", "8,x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "--batch-sizes: positive whole numbers, not '8,x'"
