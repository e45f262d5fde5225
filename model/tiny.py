"""Tiny LLaVA / LLaVA-NeXT checkpoints, built offline, for tests and local runs.

The weights are RANDOMLY INITIALISED: whatever these models generate is noise. They exist so the
whole real path (AutoProcessor, AutoModelForImageTextToText, chat template, image tokens, batched
generation, bitsandbytes) runs in seconds on a CPU with no download. A checkpoint is an ordinary
Hugging Face directory (tokenizer, processor config, chat template, config.json,
model.safetensors) loaded by exactly the same code as a real one.

Builds are deterministic: the tokenizer is trained on a fixed corpus and the weights come from a
fixed seed, so a rebuild is byte-identical. All hidden widths are multiples of 64 because
bitsandbytes' CPU kernels need that to quantise a Linear layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.llava_next import LlavaNextImageProcessorPil

from model.engine import TINY_MAX_CONTEXT, TINY_MODELS

__all__ = ["FLAVOURS", "TINY_VERSION", "build_tiny_checkpoint", "ensure_tiny_checkpoint"]

logger = logging.getLogger(__name__)

# Bump when the recipe below changes: it is part of the cache directory name.
TINY_VERSION = "1"
FLAVOURS = {"tiny-llava": "llava", "tiny-llava-next": "llava-next"}

# Weights come from torch's global RNG: two builds in one process at once would interleave their
# draws and lose determinism, so builds are serialised.
_BUILD_LOCK = threading.Lock()

_SEED = 1234
_IMAGE_SIZE = 28  # 28 px with 14 px patches: 4 image tokens per tile, fast on CPU
_PATCH_SIZE = 14
_WIDTH = 64  # every quantisable Linear must take a multiple of 64 inputs (bitsandbytes on CPU)
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_ALPHABET = list(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"()-_/\n{}[]$%#@&*+=<>"
)

# LLaVA-1.5 style: "USER: <image>\n{text} ASSISTANT:". Images first, then text, as LLaVA trains.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_WORD_TEXT = """
a an the of to and in on at for with by from is are was were be been this that these
those it its as or not no yes what which who where when how why there here very more
most some image photo picture describe detail details caption text invoice receipt form
total amount date number name address price item items quantity table chart graph page
document field value extract answer question user assistant please list all each every
only main shown red green blue black white yellow orange purple brown gray pink dark
light bright colour cat dog bird horse person people man woman child car bus bike tree
flower grass house building street road sky cloud water sea river mountain food fruit
shirt shoe bag bottle product label brand logo sign left right top bottom center middle
front back small large big little long short round square one two three four five six
seven eight nine ten json key string null true false sitting standing walking holding
wearing looking showing
"""
_WORDS = tuple(_WORD_TEXT.split())


def build_tiny_checkpoint(dest: Path, flavour: str) -> Path:
    """Write a tiny randomly initialised checkpoint of ``flavour`` into ``dest`` and return it.

    ``flavour`` is ``"llava"`` or ``"llava-next"``. ``dest`` may exist (it should be empty).
    """
    if flavour not in FLAVOURS.values():
        raise ValueError(f"flavour must be one of {sorted(FLAVOURS.values())}, not {flavour!r}")
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=_WIDTH,
        intermediate_size=2 * _WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # vision_feature_layer=-2 (LLaVA's choice) needs at least 2 vision layers.
    vision_config = CLIPVisionConfig(
        hidden_size=_WIDTH,
        intermediate_size=2 * _WIDTH,
        projection_dim=_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_IMAGE_SIZE,
        patch_size=_PATCH_SIZE,
    )
    common: dict[str, Any] = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": image_token_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
    }
    # num_additional_image_tokens=1: CLIP adds a CLS token that the "default" strategy drops; the
    # processor must know, or the image-token count is off by one.
    processor_kwargs: dict[str, Any] = {
        "tokenizer": tokenizer,
        "patch_size": _PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": _CHAT_TEMPLATE,
    }
    crop = {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    # Fork the RNG so building does not disturb the caller's random state.
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model: PreTrainedModel
        processor: ProcessorMixin
        if flavour == "llava":
            clip_processor = CLIPImageProcessorPil(
                size={"shortest_edge": _IMAGE_SIZE},
                crop_size=crop,
                image_mean=_CLIP_MEAN,
                image_std=_CLIP_STD,
            )
            processor = LlavaProcessor(  # type: ignore[no-untyped-call]
                image_processor=clip_processor, **processor_kwargs
            )
            model = LlavaForConditionalGeneration(LlavaConfig(**common))
        else:
            # Pinpoints scaled down with the base size: tiles of 1x2, 2x1 and 2x2 base images.
            s = _IMAGE_SIZE
            pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
            next_processor = LlavaNextImageProcessorPil(
                size={"shortest_edge": s},
                crop_size=crop,
                image_grid_pinpoints=pinpoints,
                image_mean=_CLIP_MEAN,
                image_std=_CLIP_STD,
            )
            processor = LlavaNextProcessor(  # type: ignore[no-untyped-call]
                image_processor=next_processor, **processor_kwargs
            )
            model = LlavaNextForConditionalGeneration(
                LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
            )
    # float32 on disk: a checkpoint loads in its saved dtype by default, and fp32 keeps batched
    # and solo greedy decoding identical on CPU.
    model.float()  # type: ignore[no-untyped-call]
    model.save_pretrained(dest, safe_serialization=True)
    processor.save_pretrained(dest)
    return dest


def ensure_tiny_checkpoint(cache_dir: Path, name: str) -> Path:
    """Return the directory of tiny checkpoint ``name``, building it on first use.

    The directory is ``cache_dir/<name>-<hash of recipe and library versions>``. It is built in a
    temporary directory beside it and renamed into place, so readers never see a half-written
    checkpoint; if a concurrent builder wins the race, its copy is used.
    """
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {', '.join(TINY_MODELS)}")
    final = cache_dir / f"{name}-{_recipe_hash(name)}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    try:
        logger.info("building tiny checkpoint %s in %s", name, final)
        build_tiny_checkpoint(building, FLAVOURS[name])
        os.chmod(building, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(building, final)
        except OSError:
            # Renaming onto a non-empty directory fails: another process finished first.
            if not final.is_dir():
                raise
            logger.info("tiny checkpoint %s was built concurrently; using that copy", name)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def _recipe_hash(name: str) -> str:
    """A short hash of everything that changes the built files: recipe and library versions."""
    recipe = {
        "name": name,
        "version": TINY_VERSION,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _build_tokenizer() -> LlamaTokenizer:
    """Train a small BPE on a fixed corpus and wrap it as a Llama tokenizer."""
    corpus = _corpus()
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # Metaspace turns spaces into "▁", which keeps a bare space character out of the vocab.
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=_SPECIALS,
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    trained = json.loads(bpe.to_str())
    vocab: dict[str, int] = trained["model"]["vocab"]
    merges = [tuple(pair) for pair in trained["model"]["merges"]]
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        # Decoder-only batched generation needs the padding on the left.
        padding_side="left",
        model_max_length=1024,
        extra_special_tokens={"image_token": "<image>"},
    )


def _corpus() -> list[str]:
    """A fixed, order-stable corpus: word sequences at several strides, and chat-template text."""
    n = len(_WORDS)
    lines = [" ".join(_WORDS[(i * k + k) % n] for k in range(1, 14)) for i in range(n)]
    lines += ["USER: describe the image ASSISTANT: a photo of a cat"] * 8
    lines.append('0 1 2 3 4 5 6 7 8 9 10 12 25 50 100 2024 12.50 $ % { } [ ] " : , . ! ?')
    return lines
