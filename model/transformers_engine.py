"""The real engine: a LLaVA-family checkpoint loaded once with transformers, generating in batches.

Only safetensors weights are loaded and remote code is never trusted (docs/design.md#I7). The
tiny names in ``TINY_MODELS`` are built offline by ``model.tiny`` and then go through exactly the
same loading code as a real checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import llguidance
import llguidance.hf
import torch
from PIL import Image
from safetensors import SafetensorError
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from model.checkpoints import check_local_checkpoint
from model.constrained import CompiledJson, JsonLogitsProcessor, compile_json, compile_pattern
from model.engine import (
    ANY_JSON_OBJECT,
    DEFAULT_GRAMMAR_CACHE_SIZE,
    TINY_MODELS,
    EngineSpec,
    GenerationRequest,
    GenerationResult,
    Turn,
    cut_at_stop,
    is_any_json_object,
)
from model.errors import DeviceOutOfMemoryError, InputError, ModelLoadError, SchemaError
from model.geometry import Frame, frame_of, preprocessing_of
from model.lru import LruCache
from model.sampling import RowSampler, StopStrings
from model.schema import canonical_schema_json, prepare_schema
from model.tiny import ensure_tiny_checkpoint

__all__ = ["TransformersEngine", "load_engine", "neutralise_special_tokens"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# What a bad checkpoint raises while loading; wrapped so the worker reports one clear line.
_LOAD_ERRORS = (
    OSError,
    ValueError,
    ImportError,
    RuntimeError,
    KeyError,
    TypeError,
    AttributeError,
    SafetensorError,
)


def load_engine(
    spec: EngineSpec, *, on_grammar_lookup: Callable[[bool], None] | None = None
) -> TransformersEngine:
    """Load the checkpoint ``spec`` names; raise ``ModelLoadError`` with a one-line reason.
    ``on_grammar_lookup``: told of each lookup of a compiled grammar (hit: True)."""
    source = _resolve_source(spec)
    device = _resolve_device(spec.device)
    dtype = _resolve_dtype(spec.dtype, device)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "dtype": dtype}
    if spec.quantization != "none":
        quant: dict[str, Any] = (
            {"load_in_8bit": True}
            if spec.quantization == "8bit"
            else {
                "load_in_4bit": True,
                "bnb_4bit_compute_dtype": dtype,
                "bnb_4bit_quant_type": "nf4",
            }
        )
        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)  # type: ignore[no-untyped-call]
        # bitsandbytes places weights while loading; a quantised model must never be .to()'d.
        kwargs["device_map"] = {"": device}
    try:
        # transformers' loaders are loosely typed; the engine keeps them as Any internally.
        processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            source, trust_remote_code=False
        )
        model: Any = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        if spec.quantization == "none":
            model.to(device)  # inside the try: a model too big for the GPU is a load error
        model.eval()
        engine = TransformersEngine(
            spec.model,
            processor,
            model,
            device=device,
            dtype=dtype,
            revision=_revision_of(source, model),
            grammar_cache_size=spec.grammar_cache_size,
            on_grammar_lookup=on_grammar_lookup,
        )
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load model {spec.model!r}: {_one_line(exc)}") from exc
    logger.info(
        "loaded model %s from %s on %s as %s (quantization %s)",
        spec.model,
        source,
        device,
        dtype,
        spec.quantization,
    )
    return engine


class TransformersEngine:
    """Implements ``model.engine.Engine`` over a transformers processor and model.

    Greedy decoding (``do_sample=False``; a request that samples is sampled row by row, see
    ``model.sampling``) so a batch gives the same text as each item alone
    (exactly so in float32; half precision can differ slightly with padding). JSON-constrained
    decoding uses llguidance (``model.constrained``): one compiled grammar per distinct schema,
    kept in a least-recently-used cache of ``grammar_cache_size`` entries (each can be tens of
    KB to MBs: unbounded, 3,000 distinct schemas cost a worker 210 MB for good), and a fresh
    logits processor per ``generate`` call. ``on_grammar_lookup`` is told of each lookup
    (hit: True), for the worker's metrics.
    """

    def __init__(
        self,
        name: str,
        processor: ProcessorMixin,
        model: PreTrainedModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        revision: str | None = None,
        grammar_cache_size: int = DEFAULT_GRAMMAR_CACHE_SIZE,
        on_grammar_lookup: Callable[[bool], None] | None = None,
    ) -> None:
        self._name = name
        self._revision = revision
        self._processor: Any = processor  # processors are untyped; keep Any contained here
        self._model: Any = model
        self._device = device
        self._dtype = dtype
        tokenizer = self._processor.tokenizer
        # Decoder-only batched generation must pad on the left, or new tokens follow padding.
        tokenizer.padding_side = "left"
        if not getattr(self._processor, "chat_template", None):
            raise ModelLoadError(f"model {name!r} has no chat template in its processor")
        self._image_token: str = getattr(self._processor, "image_token", "<image>")
        self._image_token_id: int = tokenizer.convert_tokens_to_ids(self._image_token)
        pad = tokenizer.pad_token_id
        eos = self._model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos_ids = sorted(
            {int(i) for i in [*eos_ids, tokenizer.eos_token_id] if i is not None}
        )
        self._stop_ids = set(self._eos_ids)
        self._pad_id: int = pad if pad is not None else min(self._stop_ids)
        self._stop_ids.add(self._pad_id)
        # Strings the tokenizer turns into control tokens; user text must not contain them.
        specials = {self._image_token, *tokenizer.all_special_tokens}
        self._special_strings = sorted((s for s in specials if s), key=len, reverse=True)
        self._image_tokens_max = self._measure_image_tokens()
        # What the image processor does to an image's geometry, so each result can say where
        # its image lay in the canvas the model saw (None: a processor model.geometry does
        # not know; its results carry no frame).
        self._preprocessing = preprocessing_of(self._processor.image_processor)
        self._max_images = self._measure_max_images()
        # Compiled grammars by canonical schema JSON; the grammar tokenizer is built on first use.
        self._grammar_tokenizer: llguidance.LLTokenizer | None = None
        self.grammars: LruCache[str, CompiledJson] = LruCache(
            grammar_cache_size, on_lookup=on_grammar_lookup
        )
        # Several threads may call ``generate`` at once (a worker's slots share one resident
        # model): host work (templating, tokenising, preprocessing images) runs under one lock,
        # because a fast tokenizer is not safe to use from two threads at once, and device work
        # under another, so one batch is prepared while another generates.
        self._host_lock = threading.RLock()
        self._device_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._prepared_waiting = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def revision(self) -> str | None:
        return self._revision

    def limit_cpu_threads(self, threads: int) -> bool:
        """On a CPU device, has torch run its intra-op work on ``threads`` threads; returns
        whether it did. Nothing on a GPU, nor when the operator set ``OMP_NUM_THREADS``.

        A worker asks for one. Its slots and decode threads already keep the cores busy, and
        torch's OpenMP pool is per calling thread: with a second thread (a slot, beside the
        thread that loaded the model) running torch, there are more pool threads than cores
        and every small op pays a wake-up. Measured on 2 cores with the tiny model: a batch
        took 93 ms from a slot thread against 45 ms from the main thread, and 45 ms from the
        slot thread with one intra-op thread, which is no slower alone either.
        """
        if self._device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
            return False
        torch.set_num_threads(threads)
        return True

    @property
    def suggested_batch_size(self) -> int:
        """A first GPU micro-batch for this device; the worker halves it on out-of-memory."""
        return 16 if self._device.type == "cuda" else 8

    @property
    def max_context(self) -> int:
        """Tokens the language model can attend to (prompt, image tokens and generated)."""
        config = self._model.config
        text_config = getattr(config, "text_config", config)
        return int(text_config.max_position_embeddings)

    @property
    def input_side(self) -> int:
        """The smallest image width and height that loses nothing for this model's processor.

        LLaVA-NeXT tiles up to its largest grid pinpoint; LLaVA-1.5 resizes the shortest edge.
        """
        processor = self._processor.image_processor
        pinpoints = getattr(processor, "image_grid_pinpoints", None)
        if pinpoints:
            return max(max(int(side) for side in point) for point in pinpoints)
        size = getattr(processor, "size", None) or {}
        crop = getattr(processor, "crop_size", None) or {}
        sides = [size.get("shortest_edge"), size.get("height"), crop.get("height")]
        return max(int(side) for side in sides if side) if any(sides) else 336

    @property
    def max_images(self) -> int | None:
        """How many images one request may show this model: 1 when its chat template renders
        one image placeholder however many images a message holds, None (no limit of its own)
        when it renders one per image, as LLaVA's and LLaVA-NeXT's templates do."""
        return self._max_images

    def count_prompt_tokens(self, conversation: str | Sequence[Turn]) -> int:
        """An upper bound on the tokens a conversation (or one prompt) takes, with the template
        and its image.

        Image tokens are counted at their maximum for this model (LLaVA-NeXT's count depends on
        the image's aspect ratio), so ``count + max_new_tokens <= max_context`` always fits.
        """
        turns = (Turn("user", conversation),) if isinstance(conversation, str) else conversation
        with self._host_lock:
            return self._count_templated(self._build_prompt(turns))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_new_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        fit_to_context: bool = False,
        pattern: str | None = None,
    ) -> list[GenerationResult]:
        """One result per request, in order: greedy unless the request's ``sampling`` says
        otherwise (``model.sampling``: per row, so requests of any settings share a batch).

        With ``json_schema``, decoding is constrained to its bounded form (``model.schema``):
        each result with ``finished`` True is one JSON object valid against the schema.
        Raises ``DeviceOutOfMemoryError`` on OOM, ``SchemaError`` for a schema that is
        unsupported or does not compile, and ``InputError("prompt_too_long")`` when a
        request's prompt plus ``max_new_tokens`` cannot fit in ``max_context`` (callers that
        split failing batches isolate that item; ``count_prompt_tokens`` lets them check first);
        with ``fit_to_context`` the budget shrinks to fit instead, down to one token.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if json_schema is not None and pattern is not None:
            raise ValueError("a generation is constrained by a schema or a pattern, not both")
        grammar = None if json_schema is None else self._grammar_for(json_schema)
        if pattern is not None:
            grammar = self._pattern_for(pattern)
        if not requests:
            return []
        with self._host_lock:
            texts = [self._build_prompt(r.conversation, len(r.images)) for r in requests]
            counts = [self._count_templated(text) for text in texts]
        if fit_to_context:  # a chosen default, not the user's number: take what fits
            max_new_tokens = max(1, min(max_new_tokens, self.max_context - max(counts)))
        for count in counts:
            needed = count + max_new_tokens
            if needed > self.max_context:
                raise InputError(
                    "prompt_too_long",
                    f"The prompt needs up to {needed} tokens with {max_new_tokens} new tokens, "
                    f"over the model's context of {self.max_context}.",
                )
        for r in requests:
            if self._max_images is not None and len(r.images) > self._max_images:
                raise InputError(
                    "images_not_supported",
                    f"The request carries {len(r.images)} images; model {self._name!r} takes "
                    f"{self._max_images} per request.",
                )
        images = [r.images for r in requests]
        # One processor of each per call: they hold per-row state for this batch only. The
        # sampler comes last, so it samples among the tokens the grammar allows.
        processors: list[Any] = []
        if grammar is not None:
            processors.append(JsonLogitsProcessor([grammar] * len(requests)))
        if any(r.sampling.samples for r in requests):
            processors.append(RowSampler([r.sampling for r in requests]))
        extra: dict[str, Any] = {"logits_processor": processors} if processors else {}
        try:
            with self._host_lock, torch.inference_mode():
                inputs = self._shared_inputs(images, texts) or self._prepare(images, texts)
            prompt_width = inputs["input_ids"].shape[1]
            stops = [r.sampling.stop for r in requests]
            if any(stops):
                tokenizer = self._processor.tokenizer
                extra["stopping_criteria"] = [StopStrings(tokenizer, stops, prompt_width)]
            with self._waiting_lock:
                self._prepared_waiting += 1
            with self._device_lock:
                with self._waiting_lock:
                    self._prepared_waiting -= 1
                with torch.inference_mode():
                    if "pixel_values_shared" in inputs:
                        inputs = self._encode_shared(inputs)
                    output = self._model.generate(
                        **inputs,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        num_beams=1,
                        # A random (or confused) model may emit the image token, which the
                        # processor would then count as an image placeholder; never generate it.
                        suppress_tokens=[self._image_token_id],
                        pad_token_id=self._pad_id,
                        **extra,
                    )
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            raise DeviceOutOfMemoryError(_oom_message(len(requests), exc)) from exc
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            self._release_memory()
            raise DeviceOutOfMemoryError(_oom_message(len(requests), exc)) from exc
        new_tokens = output[:, prompt_width:].tolist()
        read = inputs["attention_mask"].sum(dim=1).tolist()  # each prompt without its padding
        with self._host_lock:
            return [
                self._decode(row, int(n), r.sampling.stop, self._frame_of(r))
                for row, n, r in zip(new_tokens, read, requests, strict=True)
            ]

    def _frame_of(self, request: GenerationRequest) -> Frame | None:
        if self._preprocessing is None or len(request.images) != 1:
            return None
        width, height = request.images[0].size
        return frame_of(self._preprocessing, (width, height))

    @property
    def prepared_waiting(self) -> int:
        """Batches prepared on the host (templated, tokenised, images preprocessed and on the
        device) that wait for the device while another batch generates."""
        with self._waiting_lock:
            return self._prepared_waiting

    def _shared_inputs(
        self, per_request: list[tuple[Image.Image, ...]], texts: list[str]
    ) -> dict[str, Any] | None:
        """Host-side inputs for a batch whose requests share images (several questions about
        one photo), each distinct image preprocessed once; None when none is shared or the
        model cannot take pre-computed image features. ``_encode_shared`` finishes them on the
        device.

        The processor runs over the distinct images (with one of their texts) to get pixel values
        and each image's token count; every text then gets its image placeholder expanded to that
        count, as the processor itself does, and is tokenised with the same defaults.
        """
        if any(len(shown) != 1 for shown in per_request):  # text alone, or several images
            return None
        images = [shown[0] for shown in per_request]
        firsts: dict[int, int] = {}
        rows = [firsts.setdefault(id(image), i) for i, image in enumerate(images)]
        if len(firsts) == len(images) or not self._model._supports_mm_encoder_outputs():
            return None
        distinct = sorted(firsts.values())
        where = {row: n for n, row in enumerate(distinct)}
        own = self._prepare([(images[i],) for i in distinct], [texts[i] for i in distinct])
        counts = (own["input_ids"] == self._image_token_id).sum(dim=1).tolist()
        expanded = [
            text.replace(self._image_token, self._image_token * counts[where[row]], 1)
            for text, row in zip(texts, rows, strict=True)
        ]
        tokens = self._processor.tokenizer(expanded, padding=True, return_tensors="pt")
        encoder_args = {"pixel_values": own["pixel_values"]}
        if "image_sizes" in own:
            encoder_args["image_sizes"] = own["image_sizes"]
        return {
            "input_ids": tokens["input_ids"].to(self._device),
            "attention_mask": tokens["attention_mask"].to(self._device),
            "pixel_values_shared": encoder_args,
            "rows": [where[row] for row in rows],
        }

    def _encode_shared(self, shared: dict[str, Any]) -> dict[str, Any]:
        """Runs the vision tower once per distinct image and hands its features to
        ``generate`` as pre-computed encoder outputs, one per request, exactly where the model
        would have put its own."""
        encoded = self._model.base_model.get_image_features(
            **shared["pixel_values_shared"], return_dict=True
        )
        features = list(encoded.pooler_output)
        encoded.pooler_output = [features[n] for n in shared["rows"]]
        return {
            "input_ids": shared["input_ids"],
            "attention_mask": shared["attention_mask"],
            "mm_encoder_outputs": {"image": encoded},
        }

    def _grammar_for(self, json_schema: Mapping[str, Any]) -> CompiledJson:
        """The compiled grammar for ``json_schema``'s bounded form, compiled once per schema."""
        key = canonical_schema_json(json_schema)

        def build() -> CompiledJson:
            # SchemaError for an unsupported schema; any object is no bounded schema.
            free = is_any_json_object(json_schema)
            bounded = ANY_JSON_OBJECT if free else prepare_schema(json_schema)
            return compile_json(bounded, self._llg_tokenizer())  # SchemaError too

        with self._host_lock:  # building the grammar tokenizer reads the HF tokenizer
            return self.grammars.get_or_build(key, build)

    def _pattern_for(self, pattern: str) -> CompiledJson:
        """The compiled grammar of a regular expression, compiled once per pattern (in the
        same cache as the schemas, under a key no schema's canonical JSON takes)."""

        def build() -> CompiledJson:
            return compile_pattern(pattern, self._llg_tokenizer())

        with self._host_lock:
            return self.grammars.get_or_build("pattern:" + pattern, build)

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._grammar_tokenizer is None:
            try:
                self._grammar_tokenizer = llguidance.hf.from_tokenizer(
                    self._processor.tokenizer,
                    # The logits' width, which may exceed len(tokenizer) (llava-1.5: 32064 vs
                    # 32002); the extra ids are never allowed.
                    n_vocab=self._logits_width(),
                    eos_token=self._eos_ids,
                )
            except ValueError as exc:  # a slow (Python) tokenizer: llguidance needs a fast one
                raise SchemaError(
                    f"Constrained decoding is not available for this model: {_one_line(exc)}."
                ) from exc
        return self._grammar_tokenizer

    def _logits_width(self) -> int:
        head = self._model.get_output_embeddings()
        width = getattr(head, "out_features", None)
        if width is None:
            config = self._model.config
            width = getattr(config, "text_config", config).vocab_size
        return int(width)

    def _build_prompt(self, turns: Sequence[Turn], images: int = 1) -> str:
        """The templated text of a conversation: its ``images`` (if any) go with the first user
        turn, one image part each, in order, and earlier answers are assistant turns, as in a
        real multi-turn chat."""
        messages: list[dict[str, Any]] = []
        image_placed = images == 0
        for turn in turns:
            content: list[dict[str, Any]] = []
            if turn.role == "user" and not image_placed:
                content += [{"type": "image"}] * images
                image_placed = True
            safe = neutralise_special_tokens(turn.text, self._special_strings)
            content.append({"type": "text", "text": safe})
            messages.append({"role": turn.role, "content": content})
        text: str = self._processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text

    def _count_templated(self, text: str) -> int:
        ids = self._processor.tokenizer(text, add_special_tokens=True)["input_ids"]
        images = sum(1 for i in ids if i == self._image_token_id)
        return len(ids) - images + images * self._image_tokens_max

    def _prepare(
        self, per_request: Sequence[tuple[Image.Image, ...]], texts: list[str]
    ) -> dict[str, Any]:
        # Requests of text alone have no placeholder in their text; the processor gives the
        # images present to the placeholders in order, a request's several in its order.
        present = [image for shown in per_request for image in shown]
        batch = self._processor(
            images=present or None, text=texts, padding=True, return_tensors="pt"
        )
        prepared: dict[str, Any] = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self._device)
                # Only pixel values follow the model dtype; ids, masks and image sizes stay ints.
                if value.is_floating_point():
                    value = value.to(self._dtype)
            prepared[key] = value
        return prepared

    def _decode(
        self, row: list[int], tokens_in: int, stop: Sequence[str], frame: Frame | None = None
    ) -> GenerationResult:
        # Generation stops at eos per row; shorter rows are then filled with pad.
        count = next((i for i, tok in enumerate(row) if tok in self._stop_ids), len(row))
        text = self._processor.tokenizer.decode(row[:count], skip_special_tokens=True)
        text, stopped = cut_at_stop(str(text), stop)
        # No stop token in the row: it ran to max_new_tokens before the model ended it.
        return GenerationResult(
            text=text.strip(),
            tokens_out=count,
            finished=stopped or count < len(row),
            tokens_in=tokens_in,
            frame=frame,
        )

    def _measure_image_tokens(self) -> int:
        """The most image tokens one image can expand to, measured once with the processor.

        LLaVA-NeXT's count depends on which grid an image maps to, and not only through the
        grid's area (a tall grid adds a newline token per row), so every grid is probed.
        """
        pinpoints = getattr(self._processor.image_processor, "image_grid_pinpoints", None)
        sizes = [(int(w), int(h)) for h, w in pinpoints] if pinpoints else [(336, 336)]
        counts = []
        for size in sizes:
            probe = Image.new("RGB", size)
            try:
                batch = self._processor(
                    images=[probe], text=[self._image_token], return_tensors="pt"
                )
            except _LOAD_ERRORS as exc:
                message = f"model {self._name!r}: its processor fails on an image: {_one_line(exc)}"
                raise ModelLoadError(message) from exc
            counts.append(int((batch["input_ids"] == self._image_token_id).sum().item()))
        return max(counts)

    def _measure_max_images(self) -> int | None:
        """1 when the chat template shows a message's two images as fewer than two image
        placeholders (it takes one image), else None (``max_images``)."""
        probe = self._build_prompt([Turn("user", "")], images=2)
        return None if probe.count(self._image_token) >= 2 else 1

    def _release_memory(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def neutralise_special_tokens(text: str, specials: Sequence[str]) -> str:
    """Stop user text from producing control tokens, by putting a space after the first character.

    A literal ``<image>`` in a prompt would otherwise become an extra image placeholder and break
    the image-token count; ``</s>`` would end the prompt early. ``"<image>"`` becomes
    ``"< image>"``: still readable to the model, but tokenised as ordinary text.
    """
    for special in specials:
        if len(special) > 1 and special in text:
            text = text.replace(special, f"{special[0]} {special[1:]}")
    return text


def _resolve_source(spec: EngineSpec) -> str:
    if spec.model in TINY_MODELS:
        try:
            return str(ensure_tiny_checkpoint(spec.cache_dir, spec.model))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot build tiny model {spec.model!r}: {exc}") from exc
    path = Path(spec.model).expanduser()
    if path.is_dir():
        check_local_checkpoint(path)
        return str(path)
    if path.exists() or spec.model.startswith(("/", ".", "~")):
        raise ModelLoadError(f"model directory {spec.model!r} does not exist or is not a directory")
    return spec.model  # a hub id; transformers enforces safetensors and no remote code itself


def _revision_of(source: str, model: Any) -> str | None:
    """A hub checkpoint's commit; for a local directory, a fingerprint of its config and of its
    weight files' names and sizes (cheap: no weight is read), so a replaced checkpoint shows."""
    commit = getattr(model.config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    path = Path(source)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size};".encode())
    return f"local-{digest.hexdigest()[:12]}"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return torch.device(device)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32  # half precision on CPU is slow and less exact
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _oom_message(batch_size: int, exc: BaseException) -> str:
    return f"out of device memory generating a batch of {batch_size}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
