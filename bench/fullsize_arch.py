"""The published shapes of the full-size LLaVA checkpoints, as plain data (no torch).

``bench/fullsize.py`` builds randomly initialised checkpoints from these; ``fullsize_limits``
turns the same numbers into FLOPs, bytes and a physical throughput limit. The numbers mirror the
``config.json`` files on the Hugging Face hub, listed field by field below; the fields a
``config.json`` leaves out are the transformers defaults of the named sub-config class
(``LlamaConfig``, ``MistralConfig``, ``CLIPVisionConfig``), written out here so nothing depends on
a library default.

- ``llava-1.5-7b``: ``llava-hf/llava-1.5-7b-hf``. Text: ``lmsys/vicuna-7b-v1.5`` (Llama-2-7B:
  hidden 4096, 32 layers, 32 heads, no grouped KV, MLP 11008, RMSNorm eps 1e-5, 4096 positions),
  vocab 32064 (32000 + ``<image>`` 32000 + ``<pad>`` 32001, padded to a multiple of 64). Vision:
  CLIP ViT-L/14 at 336 px (hidden 1024, 24 layers, 16 heads, MLP 4096, quick-GELU). Projector: two
  Linear layers with GELU. ``vision_feature_layer`` -2, select strategy ``default`` (drop CLS):
  (336/14)^2 = 576 image tokens.
- ``llava-next-mistral-7b``: ``llava-hf/llava-v1.6-mistral-7b-hf``. Text:
  ``mistralai/Mistral-7B-Instruct-v0.2`` (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336,
  RMSNorm eps 1e-5, rope theta 1e6, 32768 positions, no sliding window), vocab 32064; the same
  CLIP tower and projector; anyres tiling over ``image_grid_pinpoints`` 336x672, 672x336, 672x672,
  1008x336, 336x1008 and a learned image-newline vector. Chosen over the Vicuna variant because
  it is the LLaVA-NeXT model docs/deployment.md names; its config is quoted verbatim in
  NVIDIA TensorRT-LLM's LLaVA-NeXT test (``LLAVA_NEXT_7B_CONFIG``).

Cross-checked against configs quoted in public code (the llava-1.5 ``config.json`` appears
verbatim in several repositories' tests and logs) and against the published parameter counts:
7,063,427,072 for LLaVA-1.5-7B (the hub's "7.06B"), 7,566,747,648 for LLaVA-NeXT-Mistral-7B
("7.57B"). ``tests/unit/test_bench_fullsize.py`` checks both on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "FLAVOURS",
    "Architecture",
    "TextArch",
    "VisionArch",
    "count_parameters",
    "scale_architecture",
]


@dataclass(frozen=True)
class TextArch:
    """A Llama/Mistral decoder. ``vocab`` is the embedding's row count (the logits' width)."""

    model_type: str  # "llama" or "mistral"
    source: str  # the hub id its weights came from (recorded in config.json's _name_or_path)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rms_norm_eps: float
    rope_theta: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class VisionArch:
    """A CLIP vision tower (ViT with a CLS token, pre- and post-LayerNorm)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int
    patch_size: int
    projection_dim: int

    @property
    def patches(self) -> int:
        """Patch tokens per tile (the CLS token not counted)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class Architecture:
    """One LLaVA-family model: ``kind`` is ``llava`` (1.5) or ``llava-next`` (anyres tiles)."""

    name: str
    source: str  # the hub checkpoint whose config.json this mirrors
    kind: str
    text: TextArch
    vision: VisionArch
    image_token_id: int = 32000
    pad_token_id: int = 32001
    tokenizer_size: int = 32002  # 32000 pieces + <image> + <pad>; the embedding is padded to 64
    grid_pinpoints: tuple[tuple[int, int], ...] = ()
    scaled: bool = False  # True when scale_architecture shrank it: not the published shapes

    @property
    def image_tokens(self) -> int:
        """Image tokens one image becomes: 576 for LLaVA-1.5; for LLaVA-NeXT the most it can
        become (base view plus the largest grid's tiles, before unpadding removes some)."""
        if not self.grid_pinpoints:
            return self.vision.patches
        side = self.vision.image_size
        most_tiles = max((h // side) * (w // side) for h, w in self.grid_pinpoints)
        return self.vision.patches * (1 + most_tiles)


_CLIP_VIT_L_336 = VisionArch(
    hidden=1024,
    intermediate=4096,
    layers=24,
    heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)

FLAVOURS: dict[str, Architecture] = {
    "llava-1.5-7b": Architecture(
        name="llava-1.5-7b",
        source="llava-hf/llava-1.5-7b-hf",
        kind="llava",
        text=TextArch(
            model_type="llama",
            source="lmsys/vicuna-7b-v1.5",
            hidden=4096,
            intermediate=11008,
            layers=32,
            heads=32,
            kv_heads=32,
            vocab=32064,
            max_positions=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
        ),
        vision=_CLIP_VIT_L_336,
    ),
    "llava-next-mistral-7b": Architecture(
        name="llava-next-mistral-7b",
        source="llava-hf/llava-v1.6-mistral-7b-hf",
        kind="llava-next",
        text=TextArch(
            model_type="mistral",
            source="mistralai/Mistral-7B-Instruct-v0.2",
            hidden=4096,
            intermediate=14336,
            layers=32,
            heads=32,
            kv_heads=8,
            vocab=32064,
            max_positions=32768,
            rms_norm_eps=1e-5,
            rope_theta=1000000.0,
        ),
        vision=_CLIP_VIT_L_336,
        grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
    ),
}


def scale_architecture(
    arch: Architecture, *, divisor: int = 1, layers: int | None = None
) -> Architecture:
    """``arch`` with every width divided by ``divisor`` and ``layers`` layers per tower.

    The token side stays real: vocabulary, tokenizer, image size, patch size and grid pinpoints
    are untouched, so a scaled checkpoint sees the same prompts and image-token counts as the
    full one and goes through the same build, load and generate code. Widths are rounded to
    multiples of 64 (bitsandbytes' CPU kernels need that to quantise a Linear) and head counts
    shrink with them; ``layers`` (at least 2, for ``vision_feature_layer=-2``) sets both towers.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be at least 1, not {divisor}")
    if layers is not None and layers < 2:
        raise ValueError(
            f"layers must be at least 2 (LLaVA reads the second-to-last), not {layers}"
        )
    if divisor == 1 and layers is None:
        return arch
    t, v = arch.text, arch.vision
    heads = max(1, t.heads // divisor)
    kv_heads = max(1, t.kv_heads // divisor)
    while heads % kv_heads:
        kv_heads -= 1
    text = replace(
        t,
        hidden=_width(t.hidden, divisor),
        intermediate=_width(t.intermediate, divisor),
        heads=heads,
        kv_heads=kv_heads,
        layers=layers or t.layers,
    )
    vision = replace(
        v,
        hidden=_width(v.hidden, divisor),
        intermediate=_width(v.intermediate, divisor),
        heads=max(1, v.heads // divisor),
        layers=layers or v.layers,
        projection_dim=_width(v.projection_dim, divisor),
    )
    for what, hidden, n in (
        ("text", text.hidden, text.heads),
        ("vision", vision.hidden, vision.heads),
    ):
        if hidden % n:
            raise ValueError(
                f"divisor {divisor}: {what} width {hidden} does not split into {n} heads"
            )
    return replace(arch, text=text, vision=vision, scaled=True)


def count_parameters(arch: Architecture) -> dict[str, int]:
    """Parameters by part (``text``, ``vision``, ``projector``, ``newline``) and ``total``,
    counted from the shapes: what ``LlavaForConditionalGeneration`` (or the NeXT class) holds."""
    t, v = arch.text, arch.vision
    kv = t.kv_heads * t.head_dim
    per_text_layer = (
        t.hidden * t.hidden * 2  # q, o
        + t.hidden * kv * 2  # k, v
        + 3 * t.hidden * t.intermediate  # gate, up, down
        + 2 * t.hidden  # two RMSNorms
    )
    text = t.layers * per_text_layer + 2 * t.vocab * t.hidden + t.hidden  # + embed, head, norm
    per_vision_layer = (
        4 * (v.hidden * v.hidden + v.hidden)  # q, k, v, o with biases
        + 2 * v.hidden * v.intermediate
        + v.intermediate
        + v.hidden  # fc1, fc2 with biases
        + 4 * v.hidden  # two LayerNorms
    )
    embeddings = v.hidden + 3 * v.patch_size**2 * v.hidden + (v.patches + 1) * v.hidden
    vision = embeddings + v.layers * per_vision_layer + 4 * v.hidden  # + pre/post LayerNorm
    projector = v.hidden * t.hidden + t.hidden + t.hidden * t.hidden + t.hidden
    newline = t.hidden if arch.kind == "llava-next" else 0
    total = text + vision + projector + newline
    return {
        "text": text,
        "vision": vision,
        "projector": projector,
        "newline": newline,
        "total": total,
    }


def _width(width: int, divisor: int) -> int:
    return max(64, 64 * round(width / divisor / 64))
