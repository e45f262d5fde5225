"""The engine interface: what the rest of the system needs from a vision-language model.

Kept free of torch and transformers on purpose: the CLI and ``jobs`` import these names, and the
CLI must start fast and never import torch. Implementations live in ``model.transformers_engine``
(the real one, imports torch) and ``model.fake`` (deterministic, for pipeline tests).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # Pillow loads where images are: the CLI that imports these names has none
    from PIL import Image

    from model.geometry import Frame

__all__ = [
    "ANY_JSON_OBJECT",
    "DEVICES_HELP",
    "DTYPES",
    "GREEDY",
    "QUANTIZATIONS",
    "TINY_MAX_CONTEXT",
    "TINY_MODELS",
    "DelegatingEngine",
    "Engine",
    "EngineSpec",
    "GenerationRequest",
    "GenerationResult",
    "Sampling",
    "Turn",
    "check_conversation",
    "check_device",
    "check_dtype",
    "check_quantization",
    "cut_at_stop",
    "default_cache_dir",
    "is_any_json_object",
]

# Names that ``load_engine`` builds offline (randomly initialised) instead of fetching: they let
# tests and local runs exercise the whole real loading/generation path with no download.
TINY_MODELS: tuple[str, ...] = ("tiny-llava", "tiny-llava-next")
# Their language model's context (``max_position_embeddings``), known here so that a submit can
# check a token budget against it without building or loading one.
TINY_MAX_CONTEXT = 1024

# What an engine may be asked to load with: the one place these are known and checked (the
# settings validate LLAVA_BATCH_DTYPE, _QUANTIZATION and _DEVICE with the checks below).
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS: tuple[str, ...] = ("none", "8bit", "4bit")
DEVICES_HELP = "auto|cpu|cuda|cuda:N"


def check_dtype(value: str) -> str:
    """``value`` if it is one of ``DTYPES``; else ValueError naming the choices and the value."""
    if value not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {value!r}")
    return value


def check_quantization(value: str) -> str:
    """``value`` if it is one of ``QUANTIZATIONS``; else ValueError naming them and the value."""
    if value not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {value!r}")
    return value


def check_device(value: str) -> str:
    """``value`` if it names a device (``DEVICES_HELP``); else ValueError naming the value."""
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"device must be {DEVICES_HELP}, not {value!r}")


def default_cache_dir() -> Path:
    """Where tiny checkpoints are built unless told otherwise."""
    return Path.home() / ".cache" / "llava-batch"


ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: ``role`` is system, user or assistant; plain text."""

    role: str
    text: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")


def check_conversation(turns: Sequence[Turn]) -> None:
    """Raises ValueError unless the user and assistant turns alternate and the last is the
    user's (system turns may stand anywhere)."""
    spoken = [t.role for t in turns if t.role != "system"]
    if not spoken or spoken[-1] != "user":
        raise ValueError("a conversation must end with a user turn")
    if any(a == b for a, b in itertools.pairwise(spoken)):
        raise ValueError("user and assistant turns must alternate")


MAX_TEMPERATURE = 2.0  # OpenAI's bound
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens, and where its text ends.

    The default is greedy decoding (``temperature`` 0): the same text for the same input, alone
    or in any batch. A ``temperature`` above 0 samples from the model's distribution at that
    temperature, kept to the smallest set of tokens whose probability reaches ``top_p``. With a
    ``seed`` each request draws from its own generator, so the same request gives the same text
    on the same engine whatever shares its batch; without one every run differs. ``stop``: the
    text ends before the first of these strings, which is left out, as OpenAI's ``stop`` does.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be 0 to {MAX_TEMPERATURE}, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be above 0 and at most 1, not {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be a 64-bit integer, not {self.seed}")
        if any(not s for s in self.stop):
            raise ValueError("a stop string must not be empty")

    @property
    def samples(self) -> bool:
        return self.temperature > 0


GREEDY = Sampling()


# The schema of OpenAI's ``response_format: {"type": "json_object"}``: any JSON object. Outside
# the bounded subset of user schemas (``model.schema``), so only this exact schema means it.
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def is_any_json_object(schema: object) -> bool:
    return isinstance(schema, Mapping) and dict(schema) == ANY_JSON_OBJECT


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of the ``stop`` strings in it, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


@dataclass(frozen=True, init=False)
class GenerationRequest:
    """One generation: an image (or several, or none) and a conversation about it, ending with
    a user turn.

    ``image`` is already decoded to RGB (see ``model.images.decode_image``): one image, a
    sequence of them (one request about several, shown in order), or None for a conversation
    of text alone; ``images`` holds them as a tuple. The turns hold only
    text: the engine applies the chat template and puts the images in the first user turn. A
    plain string is a one-turn conversation (a caption or extraction prompt). Requests that
    share one image object (several questions about a photo) let an engine encode it once.
    ``sampling``: how this request alone picks its tokens (greedy unless told otherwise).
    """

    images: tuple[Image.Image, ...]
    conversation: tuple[Turn, ...]
    sampling: Sampling

    def __init__(
        self,
        image: Image.Image | Sequence[Image.Image] | None,
        conversation: str | Sequence[Turn],
        sampling: Sampling = GREEDY,
    ) -> None:
        turns = (
            (Turn("user", conversation),) if isinstance(conversation, str) else tuple(conversation)
        )
        check_conversation(turns)
        if image is None:
            images: Sequence[Image.Image] = ()
        else:
            from PIL import Image

            images = (image,) if isinstance(image, Image.Image) else image
        object.__setattr__(self, "images", tuple(images))
        object.__setattr__(self, "conversation", turns)
        object.__setattr__(self, "sampling", sampling)

    @property
    def image(self) -> Image.Image | None:
        """The first image (None for text alone)."""
        return self.images[0] if self.images else None

    @property
    def prompt(self) -> str:
        """The last user turn: what is being asked now."""
        return self.conversation[-1].text


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced. ``tokens_out`` counts generated tokens, not padding or eos.

    ``finished`` is False when generation stopped at ``max_new_tokens`` before the model ended
    the text: for a JSON-constrained request the text is then an incomplete object, to be
    reported as ``output_truncated``, never stored as a result.
    """

    text: str
    tokens_out: int
    finished: bool = True
    tokens_in: int = 0  # prompt tokens the model read: text, template and image tokens
    # How the processor placed the request's one image on the canvas the model saw (what a box
    # the model wrote is normalised to); None for several images, none, or an engine that
    # cannot say.
    frame: Frame | None = None


class Engine(Protocol):
    """A loaded model that captions/answers about images in batches."""

    @property
    def name(self) -> str:
        """The model id or path as configured; recorded on jobs."""
        ...

    @property
    def revision(self) -> str | None:
        """Which version of ``name`` is loaded (a hub commit, or a fingerprint of a local
        directory); None when unknown. Recorded on every item this engine produces."""
        ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        fit_to_context: bool = False,
        pattern: str | None = None,
    ) -> list[GenerationResult]:
        """Return exactly one result per request, in the same order.

        Several threads may call this at once (a worker's slots share one engine): an engine
        serialises its own device work, and may prepare one batch while another generates.

        ``fit_to_context``: ``max_new_tokens`` is a default the caller chose, not a user's
        number: shrink it to what the model's context leaves after the longest prompt, instead
        of refusing the batch as too long.

        With ``json_schema`` (a user schema, see ``model.schema``) decoding is constrained by its
        bounded form, and each finished result's text is one JSON object valid against it;
        ``ANY_JSON_OBJECT`` constrains it to any JSON object. With ``pattern`` (a regular
        expression, not with ``json_schema``) each finished result's text matches it whole.
        Raises ``DeviceOutOfMemoryError`` when the batch does not fit (callers split and retry)
        and ``SchemaError`` when the schema is unsupported or cannot be compiled.
        """
        ...


class DelegatingEngine:
    """An ``Engine`` around another that forwards ``name``, ``revision`` and ``generate`` to it:
    the base of the wrappers that add to an engine (fault injection, a benchmark's timers). A
    subclass overrides what it changes and calls ``super().generate(requests, **options)`` to
    reach the wrapped engine, passing ``Engine.generate``'s keyword options on untouched.
    Nothing else is forwarded: optional attributes (``input_side``, …) are hidden unless a
    subclass passes them on itself."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def revision(self) -> str | None:
        return self._engine.revision

    def generate(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[GenerationResult]:
        return self._engine.generate(requests, **options)


# Compiled grammars an engine keeps: a few extraction schemas in use at once fit many times
# over, and the cache stays within tens of MB (about 70 KB a grammar was measured).
DEFAULT_GRAMMAR_CACHE_SIZE = 128


@dataclass(frozen=True)
class EngineSpec:
    """How to build an engine; plain data so settings can produce it without importing torch.

    ``model``: one of ``TINY_MODELS``, a hub id, or a local directory.
    ``dtype``: ``auto`` means bfloat16 (or float16 where bf16 is unsupported) on CUDA, float32 on
    CPU. ``device``: ``auto`` picks CUDA when available. ``quantization``: bitsandbytes 8/4-bit.
    ``cache_dir``: where tiny checkpoints are built. ``grammar_cache_size``: how many compiled
    JSON grammars (one per distinct schema) the engine keeps, the least recently used dropped.
    """

    model: str = "tiny-llava"
    dtype: str = "auto"
    device: str = "auto"
    quantization: str = "none"
    cache_dir: Path = field(default_factory=default_cache_dir)
    grammar_cache_size: int = DEFAULT_GRAMMAR_CACHE_SIZE

    def __post_init__(self) -> None:
        # Fail at configuration time, with a message naming the bad value, not deep in loading.
        check_dtype(self.dtype)
        check_quantization(self.quantization)
        check_device(self.device)
        if not self.model.strip():
            raise ValueError("model must not be empty")
        if self.grammar_cache_size < 1:
            raise ValueError(f"grammar_cache_size must be 1 or more: {self.grammar_cache_size}")
