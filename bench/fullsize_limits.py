"""The physical limit of a LLaVA model on a GPU: FLOPs and bytes per image, turned into items/s.

Pure arithmetic on an ``Architecture`` (``fullsize_arch``); no torch. It follows
``/work/shared/reference/performance-anchors.md`` §3, so its figures reproduce the anchors
(LLaVA-1.5-7B captioning on one H100: about 85 img/s with prefill and decode overlapped, 55 with
the phases in sequence; the anchors, which count the embedding table as matmul work, say 82/54).

Assumptions, each a choice a reader may disagree with:

- Compute. Dense bf16/fp16 tensor-core peak (H100 SXM and H200: 989 TFLOP/s). Large matmuls
  reach about 80 % of it (790 TFLOP/s, the anchors' figure), so ``achievable_flops`` is what the
  compute side of the limit uses; ``prefill_peak_items_per_s`` is the rawer "prefill FLOPs ÷ peak".
  4-bit (bitsandbytes nf4) dequantises into bf16 matmuls: same compute, fewer weight bytes.
- FLOPs count 2 per multiply-add of every matmul that runs: all CLIP layers (transformers runs the
  whole tower and picks the second-to-last hidden state), the patch convolution, the projector,
  the decoder's Linear layers for every prompt token, the LM head for one prefill position (
  ``generate`` keeps only the last logits) and every decoded token, attention scores and
  weighted sums (causal prefill: half the square). Norms, activations, softmax and the embedding
  lookup are ignored (well under 1 %).
- Decode is memory-bound: each step reads the decoder's weights once for the whole batch and each
  sequence's KV cache (fp16). The batch is as large as fits: device memory, minus the weights,
  minus 6 GB of activations and workspace, divided by one finished sequence's KV cache.
- ``overlapped``: prefill of some requests runs while others decode (continuous batching), so an
  image costs max(all its compute, its decode HBM time). ``sequential``: static batches, phases
  one after another: prefill compute + decode time. This project batches statically, so
  ``sequential`` is what it could reach; ``overlapped`` is the hardware's limit and the figure
  docs/benchmarks.md's target (≥ 25 %, about 20 img/s on an H100) is a fraction of.
"""

from __future__ import annotations

from dataclasses import dataclass

from fullsize_arch import Architecture, count_parameters

__all__ = [
    "GPUS",
    "Gpu",
    "ImageCost",
    "PhysicalLimit",
    "find_gpu",
    "image_cost",
    "physical_limit",
    "weight_bytes",
]

_RESERVED_BYTES = 6e9  # activations, CUDA context, allocator slack
_NF4_BYTES_PER_PARAM = 0.5 + 4 / 64  # 4 bits + one fp32 absmax per 64-value block
_HALF = 2  # bytes per fp16/bf16 value
PRECISIONS = ("float16", "bfloat16", "4bit")


@dataclass(frozen=True)
class Gpu:
    """Datasheet figures: dense (no sparsity) bf16 tensor FLOP/s, HBM bytes/s, memory bytes."""

    name: str
    peak_flops: float
    hbm_bytes_per_s: float
    memory_bytes: float
    matmul_efficiency: float = 0.8  # the share of peak large bf16 matmuls reach (anchors: 790/989)

    @property
    def achievable_flops(self) -> float:
        return self.peak_flops * self.matmul_efficiency


GPUS: dict[str, Gpu] = {
    "h100-sxm": Gpu("H100 SXM", 989e12, 3.35e12, 80e9),
    "h100-pcie": Gpu("H100 PCIe", 756e12, 2.0e12, 80e9),
    "h200": Gpu("H200", 989e12, 4.8e12, 141e9),  # H100's compute, faster and larger HBM3e
    "a100-80gb": Gpu("A100 80GB", 312e12, 2.039e12, 80e9),
}


def find_gpu(device_name: str) -> Gpu | None:
    """The table entry for a ``torch.cuda.get_device_name()`` string, or None if unknown."""
    name = device_name.upper()
    if "H200" in name:
        return GPUS["h200"]
    if "H100" in name:
        return GPUS["h100-pcie" if "PCIE" in name else "h100-sxm"]
    if "A100" in name and "80" in name:
        return GPUS["a100-80gb"]
    return None


@dataclass(frozen=True)
class ImageCost:
    """The work one image costs: FLOPs by phase, decode bytes per step and per cached token."""

    prompt_tokens: int
    new_tokens: int
    vision_tiles: int
    vision_flops: float  # CLIP tower over every tile, and the projector
    prefill_flops: float  # the decoder over the prompt (image and text tokens)
    decode_flops: float  # every generated token
    decode_weight_bytes: float  # the decoder and LM head, read once per decode step
    kv_bytes_per_token: float

    @property
    def total_flops(self) -> float:
        return self.vision_flops + self.prefill_flops + self.decode_flops


@dataclass(frozen=True)
class PhysicalLimit:
    """Seconds per image on ``gpu`` by phase, and the items/s they allow."""

    gpu: Gpu
    precision: str
    cost: ImageCost
    batch: int  # sequences decoded together (as many as fit)
    prefill_seconds: float  # vision + prefill at achievable FLOP/s
    decode_compute_seconds: float
    decode_hbm_seconds: float  # this image's share of the HBM traffic of its decode steps

    @property
    def overlapped_items_per_s(self) -> float:
        compute = self.prefill_seconds + self.decode_compute_seconds
        return 1 / max(compute, self.decode_hbm_seconds)

    @property
    def sequential_items_per_s(self) -> float:
        decode = max(self.decode_compute_seconds, self.decode_hbm_seconds)
        return 1 / (self.prefill_seconds + decode)

    @property
    def prefill_peak_items_per_s(self) -> float:
        """Vision + prefill FLOPs ÷ peak FLOP/s: the bound ignoring decode and efficiency."""
        return self.gpu.peak_flops / (self.cost.vision_flops + self.cost.prefill_flops)

    @property
    def items_per_s(self) -> float:
        """The headline limit: the overlapped one (see the module docstring)."""
        return self.overlapped_items_per_s


def image_cost(
    arch: Architecture,
    *,
    prompt_tokens: int | None = None,
    new_tokens: int = 60,
    vision_tiles: int | None = None,
    precision: str = "bfloat16",
) -> ImageCost:
    """FLOPs and bytes of one image with ``prompt_tokens`` (image + text; default the most image
    tokens plus 40 text tokens, as in the anchors) and ``new_tokens`` generated.

    ``vision_tiles``: CLIP passes per image; default 1 for LLaVA-1.5, and for LLaVA-NeXT one per
    576 prompt image tokens (base view plus grid tiles), at least 1 and at most 5.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    t, v = arch.text, arch.vision
    n = arch.image_tokens + 40 if prompt_tokens is None else prompt_tokens
    if vision_tiles is None:
        most = arch.image_tokens // v.patches
        vision_tiles = 1 if not arch.grid_pinpoints else max(1, min(most, round(n / v.patches)))
    # The vision tower, per tile: CLS + patches through every layer.
    tokens = v.patches + 1
    vision_linear = v.layers * (4 * v.hidden**2 + 2 * v.hidden * v.intermediate)
    per_tile = (
        2 * tokens * vision_linear
        + v.layers * 4 * tokens**2 * v.hidden  # scores and weighted sums, all heads
        + 2 * v.patches * 3 * v.patch_size**2 * v.hidden  # patch convolution
    )
    projector = 2 * v.patches * (v.hidden * t.hidden + t.hidden * t.hidden)
    vision = vision_tiles * (per_tile + projector)
    # The decoder: Linear weights per token, causal attention, one LM-head row at prefill.
    kv = t.kv_heads * t.head_dim
    text_linear = t.layers * (2 * t.hidden**2 + 2 * t.hidden * kv + 3 * t.hidden * t.intermediate)
    head = t.vocab * t.hidden
    prefill = 2 * n * text_linear + 2 * t.layers * n**2 * t.hidden + 2 * head
    # Decode token i attends to n + i earlier tokens.
    attended = new_tokens * n + new_tokens * (new_tokens - 1) / 2
    decode = 2 * new_tokens * (text_linear + head) + 4 * t.layers * t.hidden * attended
    per_param = _NF4_BYTES_PER_PARAM if precision == "4bit" else _HALF
    return ImageCost(
        prompt_tokens=n,
        new_tokens=new_tokens,
        vision_tiles=vision_tiles,
        vision_flops=float(vision),
        prefill_flops=float(prefill),
        decode_flops=float(decode),
        decode_weight_bytes=text_linear * per_param + head * _HALF,  # the LM head stays 16-bit
        kv_bytes_per_token=float(2 * t.layers * kv * _HALF),
    )


def physical_limit(
    arch: Architecture,
    gpu: Gpu,
    *,
    prompt_tokens: int | None = None,
    new_tokens: int = 60,
    vision_tiles: int | None = None,
    precision: str = "bfloat16",
    batch: int | None = None,
) -> PhysicalLimit:
    """The limit of ``arch`` on ``gpu`` for one workload (see ``image_cost`` for the arguments).

    ``batch``: sequences decoding together; default as many as fit in memory (module docstring).
    """
    cost = image_cost(
        arch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        vision_tiles=vision_tiles,
        precision=precision,
    )
    if batch is None:
        free = gpu.memory_bytes - weight_bytes(arch, precision) - _RESERVED_BYTES
        per_sequence = (cost.prompt_tokens + new_tokens) * cost.kv_bytes_per_token
        batch = max(1, int(free // per_sequence))
    mean_context = cost.prompt_tokens + (new_tokens - 1) / 2
    traffic = new_tokens * (
        cost.decode_weight_bytes / batch + mean_context * cost.kv_bytes_per_token
    )
    return PhysicalLimit(
        gpu=gpu,
        precision=precision,
        cost=cost,
        batch=batch,
        prefill_seconds=(cost.vision_flops + cost.prefill_flops) / gpu.achievable_flops,
        decode_compute_seconds=cost.decode_flops / gpu.achievable_flops,
        decode_hbm_seconds=traffic / gpu.hbm_bytes_per_s,
    )


def weight_bytes(arch: Architecture, precision: str) -> float:
    """Bytes the loaded weights take: 16-bit, or nf4 for the Linear layers bitsandbytes
    quantises (decoder, CLIP and projector; embeddings, norms and the LM head stay 16-bit)."""
    total = count_parameters(arch)["total"]
    if precision != "4bit":
        return float(total * _HALF)
    t, v = arch.text, arch.vision
    kv = t.kv_heads * t.head_dim
    linear = (
        t.layers * (2 * t.hidden**2 + 2 * t.hidden * kv + 3 * t.hidden * t.intermediate)
        + v.layers * (4 * v.hidden**2 + 2 * v.hidden * v.intermediate)
        + v.hidden * t.hidden
        + t.hidden**2
    )
    return linear * _NF4_BYTES_PER_PARAM + (total - linear) * _HALF
