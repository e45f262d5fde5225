"""Everything in a full-size checkpoint except the weights: tokenizer, chat template, processor.

The tokenizer is Llama-shaped like the real ones (Vicuna's and Mistral's are both SentencePiece
BPE with 32000 pieces): ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte-fallback pieces
``<0x00>``..``<0xFF>`` at 3..258, then merges, then ``<image>`` 32000 and ``<pad>`` 32001 as in the
llava-hf repositories; BOS is added, padding is on the left. Its pieces come from a BPE trained
on a fixed corpus (common English words and seeded pseudo-words), padded with filler pieces up to
32000; a filler piece is never produced by encoding but decodes like any other. Prompts therefore
take a realistic number of tokens and the embedding has the real row count; the text a random
model writes is noise either way. The build is deterministic.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

from fullsize_arch import Architecture
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaTokenizer, LlavaNextProcessor, LlavaProcessor, ProcessorMixin
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.llava_next import LlavaNextImageProcessorPil

__all__ = ["CHAT_TEMPLATES", "build_processor", "build_tokenizer"]

_PIECES = 32000
_SEED = 20240
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_ALPHABET = [chr(c) for c in range(33, 127)]

# Modelled on the chat templates the llava-hf repositories ship: Vicuna's "USER: … ASSISTANT:"
# for llava-1.5-7b-hf, Mistral's "[INST] … [/INST]" for llava-v1.6-mistral-7b-hf. Images come
# before the text of a turn, as LLaVA was trained.
CHAT_TEMPLATES = {
    "llama": (
        "{% for message in messages %}"
        "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<image>\n' }}{% endfor %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ c['text'] + ' ' }}{% endfor %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    "mistral": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<image>\n' }}{% endfor %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ c['text'] }}{% endfor %}{{ ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
        "{% endif %}{% endfor %}"
    ),
}

_ENGLISH = """
a an the of to and in on at for with by from is are was were be been this that these those it
its as or not no yes what which who where when how why there here very more most some image
photo picture describe detail details caption text invoice receipt form total amount date number
name address price item items quantity table chart graph page document field value extract
answer question user assistant system please list all each every only main shown sentence one
two three four five red green blue black white yellow orange purple brown gray pink dark light
cat dog bird horse person people man woman child car bus bike tree flower house building street
road sky water food shirt shoe bag bottle product label brand logo sign left right top bottom
center front back small large json key string null true false sitting standing holding wearing
"""


def build_tokenizer(arch: Architecture) -> LlamaTokenizer:
    """A Llama-style tokenizer with the real vocabulary size and special-token ids."""
    trained_pieces, merges = _trained_bpe()
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in trained_pieces:
        vocab.setdefault(piece, len(vocab))
    filler = 0
    while len(vocab) < _PIECES:
        vocab.setdefault(f"▁w{filler}", len(vocab))
        filler += 1
    vocab["<image>"] = arch.image_token_id
    vocab["<pad>"] = arch.pad_token_id
    if len(vocab) != arch.tokenizer_size:
        raise ValueError(f"tokenizer has {len(vocab)} tokens, expected {arch.tokenizer_size}")
    return LlamaTokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        padding_side="left",
        model_max_length=arch.text.max_positions,
        extra_special_tokens={"image_token": "<image>"},
    )


def build_processor(arch: Architecture, tokenizer: LlamaTokenizer) -> ProcessorMixin:
    """The processor llava-hf ships for ``arch``: CLIP preprocessing at 336 px (anyres tiling for
    LLaVA-NeXT), the image-token expansion, and the chat template."""
    side = arch.vision.image_size
    image_args: dict[str, Any] = {
        "size": {"shortest_edge": side},
        "crop_size": {"height": side, "width": side},
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
    processor_args: dict[str, Any] = {
        "tokenizer": tokenizer,
        "patch_size": arch.vision.patch_size,
        "vision_feature_select_strategy": "default",
        # CLIP's CLS token, which the "default" strategy drops: the processor must know it.
        "num_additional_image_tokens": 1,
        "chat_template": CHAT_TEMPLATES[arch.text.model_type],
    }
    if arch.kind == "llava":
        clip = CLIPImageProcessorPil(**image_args)
        return LlavaProcessor(image_processor=clip, **processor_args)  # type: ignore[no-untyped-call]
    pinpoints = [list(point) for point in arch.grid_pinpoints]
    tiles = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, do_pad=True, **image_args)
    return LlavaNextProcessor(image_processor=tiles, **processor_args)  # type: ignore[no-untyped-call]


@functools.cache
def _trained_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Pieces (in id order) and merges of a BPE trained on ``_corpus``; the same for every
    flavour, so trained once per process (about a second)."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=_PIECES - 3 - 256, initial_alphabet=_ALPHABET, show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    pieces = tuple(p for p, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]))
    merges = [m.split(" ") if isinstance(m, str) else m for m in trained["merges"]]
    return pieces, tuple((a, b) for a, b in merges)


def _corpus() -> list[str]:
    """English words, often (so each is one piece), then seeded pseudo-words for the long tail."""
    rng = random.Random(_SEED)
    english = _ENGLISH.split()
    onsets = [*"bcdfghjklmnprstvwz", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st"]
    vowels = [*"aeiou", "ai", "ea", "ee", "ie", "oo", "ou"]
    codas = ["", "n", "r", "s", "t", "ng", "ck", "ed", "er"]

    def pseudo() -> str:
        syllables = rng.randint(1, 3)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        return word + rng.choice(codas)

    pseudo_words = [pseudo() for _ in range(20000)]
    lines = [" ".join(rng.choice(english) for _ in range(16)) for _ in range(4000)]
    lines += [" ".join(rng.choice(pseudo_words) for _ in range(12)) for _ in range(8000)]
    lines += [w.capitalize() + "." for w in english] + ["USER: ASSISTANT: [INST] [/INST]"] * 64
    lines.append('0 1 2 3 4 5 6 7 8 9 10 12 25 50 100 2024 12.50 $ % { } [ ] " : , . ! ?')
    return lines
