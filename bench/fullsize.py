"""Full-size LLaVA checkpoints with random weights, built offline: the real shapes and FLOPs.

A GPU benchmark needs the real model's cost, not its answers. This writes an ordinary Hugging
Face directory (config.json, generation_config.json, sharded fp16 safetensors with an index,
tokenizer, processor config, chat template) with the published configuration of
``llava-hf/llava-1.5-7b-hf`` or ``llava-hf/llava-v1.6-mistral-7b-hf`` (``fullsize_arch`` lists
every number and its source) and RANDOMLY INITIALISED weights, so its text is noise. It is loaded
by exactly the same code as a downloaded checkpoint (``load_engine`` with the directory as
``EngineSpec.model``). A benchmark tool, not part of the product: ``bench/throughput.py --gpu``
and its tests use it.

Memory: the model is only ever built on the meta device, for its parameter names and shapes;
weights are drawn one tensor at a time, directly in fp16, and written shard by shard, so the
builder holds about one shard (2 GiB) at a time, never the 7B model. Each tensor has its own
generator seeded from the seed and its name, so a rebuild is identical. A full 7B build writes
about 14 GB; ``scale_architecture`` gives the same recipe at a fraction of the width and depth
(real tokenizer, image size and token counts) for tests on a CPU.

    python bench/fullsize.py --flavour llava-1.5-7b --out DIR
    python bench/fullsize.py --flavour llava-1.5-7b --info     # counts and limits, builds nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from fullsize_arch import FLAVOURS, Architecture, count_parameters, scale_architecture
from fullsize_assets import build_processor, build_tokenizer
from fullsize_limits import GPUS, physical_limit
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedModel,
)

__all__ = [
    "FULLSIZE_VERSION",
    "build_fullsize_checkpoint",
    "build_fullsize_config",
    "build_meta_model",
    "ensure_fullsize_checkpoint",
]

logger = logging.getLogger(__name__)

FULLSIZE_VERSION = "1"  # bump when the recipe changes: it is part of the cache directory name
DEFAULT_SHARD_BYTES = 2 * 2**30
_SEED = 4321
_INIT_STD = 0.02  # the initializer_range of the Llama and CLIP configs


def build_fullsize_config(arch: Architecture) -> LlavaConfig | LlavaNextConfig:
    """The transformers config of ``arch``: ``LlavaConfig`` or ``LlavaNextConfig``."""
    t, v = arch.text, arch.vision
    text_args: dict[str, Any] = {
        "vocab_size": t.vocab,
        "hidden_size": t.hidden,
        "intermediate_size": t.intermediate,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "max_position_embeddings": t.max_positions,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": arch.pad_token_id,
        "tie_word_embeddings": False,
    }
    text: PreTrainedConfig = (
        MistralConfig(sliding_window=None, **text_args)
        if t.model_type == "mistral"
        else LlamaConfig(**text_args)
    )
    vision = CLIPVisionConfig(
        hidden_size=v.hidden,
        intermediate_size=v.intermediate,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        projection_dim=v.projection_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": arch.image_token_id,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_seq_length": v.patches,
        "tie_word_embeddings": False,
        "dtype": "float16",
    }
    if arch.kind == "llava":
        return LlavaConfig(**common)
    pinpoints = [list(point) for point in arch.grid_pinpoints]
    return LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)


def build_meta_model(arch: Architecture) -> PreTrainedModel:
    """``arch``'s model on the meta device: every parameter's name and shape, no memory."""
    config = build_fullsize_config(arch)
    with torch.device("meta"):
        if isinstance(config, LlavaNextConfig):
            return LlavaNextForConditionalGeneration(config)
        return LlavaForConditionalGeneration(config)


def build_fullsize_checkpoint(
    dest: Path,
    arch: Architecture,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    init_device: str = "cpu",
) -> Path:
    """Write a randomly initialised checkpoint of ``arch`` into ``dest`` (created; should be
    empty) and return it. Raises ``OSError`` when the disk has no room for it.

    ``init_device``: where the random numbers are drawn. ``"cuda"`` draws a 7B model in well
    under a second instead of about a minute on one CPU core (then only the disk writes take
    time); its values differ from a CPU build's, and are as random.
    """
    dest.mkdir(parents=True, exist_ok=True)
    model = build_meta_model(arch)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    needed = 2 * sum(_numel(shape) for shape in shapes.values())
    free = shutil.disk_usage(dest).free
    if needed + 2**30 > free:
        raise OSError(
            f"{arch.name} needs {needed / 1e9:.1f} GB in {dest}; {free / 1e9:.1f} GB is free"
        )
    shards = _plan_shards(shapes, shard_bytes)
    weight_map: dict[str, str] = {}
    for index, names in enumerate(shards, start=1):
        filename = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        tensors = {name: _initial_tensor(name, shapes[name], init_device) for name in names}
        save_file(tensors, str(dest / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        logger.info("wrote %s (%d tensors) of %s", filename, len(names), arch.name)
        del tensors
    if len(shards) > 1:
        index_file = {
            "metadata": {"total_size": needed, "total_parameters": needed // 2},
            "weight_map": weight_map,
        }
        text = json.dumps(index_file, indent=2, sort_keys=True) + "\n"
        (dest / "model.safetensors.index.json").write_text(text, encoding="utf-8")
    for shard in set(weight_map.values()):
        os.chmod(dest / shard, 0o644)  # safetensors writes 0600; the cache may be shared
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(dest)
    GenerationConfig.from_model_config(model.config).save_pretrained(dest)
    tokenizer = build_tokenizer(arch)
    build_processor(arch, tokenizer).save_pretrained(dest)
    return dest


def ensure_fullsize_checkpoint(
    cache_dir: Path,
    flavour: str,
    *,
    divisor: int = 1,
    layers: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    init_device: str = "cpu",
) -> Path:
    """Return the directory of ``flavour`` (scaled by ``divisor``/``layers``), building it on
    first use under ``cache_dir``: in a temporary directory beside it, then renamed into place,
    so a reader never sees a half-written checkpoint. A checkpoint drawn on another
    ``init_device`` is reused: the values differ, the shapes and cost do not."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    arch = scale_architecture(FLAVOURS[flavour], divisor=divisor, layers=layers)
    label = flavour if not arch.scaled else f"{flavour}-d{divisor}-l{layers or 'all'}"
    final = cache_dir / f"{label}-{_recipe_hash(arch)}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    try:
        logger.info("building %s checkpoint in %s", label, final)
        build_fullsize_checkpoint(building, arch, shard_bytes=shard_bytes, init_device=init_device)
        os.chmod(building, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(building, final)
        except OSError:
            if not final.is_dir():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def _plan_shards(shapes: dict[str, tuple[int, ...]], shard_bytes: int) -> list[list[str]]:
    """State-dict names grouped, in order, into shards of at most ``shard_bytes`` (fp16)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _initial_tensor(name: str, shape: tuple[int, ...], device: str = "cpu") -> torch.Tensor:
    """One parameter as the transformers initialisers would make it, directly in fp16: norm
    weights 1, biases 0, everything else normal(0, 0.02), from a generator of its own."""
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16)
    if len(shape) == 1 and "norm" in name:  # RMSNorm / LayerNorm weights (CLIP's "pre_layrnorm")
        return torch.ones(shape, dtype=torch.float16)
    generator = torch.Generator(device=device).manual_seed(_SEED ^ zlib.crc32(name.encode()))
    tensor = torch.empty(shape, dtype=torch.float16, device=device)
    return tensor.normal_(0.0, _INIT_STD, generator=generator).cpu()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for side in shape:
        count *= side
    return count


def _recipe_hash(arch: Architecture) -> str:
    recipe = {
        "arch": repr(arch),
        "version": FULLSIZE_VERSION,
        "seed": _SEED,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/fullsize.py",
        description="Build a randomly initialised LLaVA checkpoint with the published shapes.",
    )
    parser.add_argument("--flavour", choices=sorted(FLAVOURS), default="llava-1.5-7b")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="build into this (new or empty) directory")
    where.add_argument("--cache-dir", type=Path, help="build once into this cache (default)")
    parser.add_argument("--divisor", type=int, default=1, help="divide every width by this")
    parser.add_argument("--layers", type=int, help="layers per tower (default: the real count)")
    parser.add_argument("--shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 2**30)
    parser.add_argument("--init-device", default="cpu", help="draw the weights here (cuda: fast)")
    parser.add_argument("--info", action="store_true", help="print counts and limits only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        arch = scale_architecture(FLAVOURS[args.flavour], divisor=args.divisor, layers=args.layers)
    except ValueError as exc:
        parser.error(str(exc))
    if args.info:
        counts = count_parameters(arch)
        print(f"{arch.name} ({arch.source}): {counts['total']:,} parameters")
        for gpu in (GPUS["h100-sxm"], GPUS["h200"]):
            limit = physical_limit(arch, gpu)
            print(
                f"  {gpu.name}: {limit.cost.total_flops / 1e12:.2f} TFLOP/image, limit "
                f"{limit.overlapped_items_per_s:.1f} img/s overlapped, "
                f"{limit.sequential_items_per_s:.1f} in sequence"
            )
        return 0
    shard_bytes = int(args.shard_gb * 2**30)
    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            parser.error(f"--out {args.out} is not empty")
        path = build_fullsize_checkpoint(
            args.out, arch, shard_bytes=shard_bytes, init_device=args.init_device
        )
    else:
        cache = args.cache_dir or Path.home() / ".cache" / "llava-batch" / "fullsize"
        path = ensure_fullsize_checkpoint(
            cache,
            args.flavour,
            divisor=args.divisor,
            layers=args.layers,
            shard_bytes=shard_bytes,
            init_device=args.init_device,
        )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
