"""OpenAI-Batch JSONL, the input side: one chat-completions request per line, read as a ``chat``
item (``jobs/kinds/chat.py``).

A line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {"model",
"messages", "max_tokens" | "max_completion_tokens", "response_format"?, "temperature"?, …}}``.
Parsing is pure (no I/O): ``parse_openai_line`` turns a line into the chat item's fields and its
image references (none, one or several); ``jobs.submit.sources`` resolves each image (a
``data:`` URI, an ``s3://`` URI, a path next to the file) and refuses the whole file on any
malformed line, with its number; a line over ``MAX_IMAGES_PER_REQUEST`` fails its own item.

Sampling (``temperature``, ``top_p``, ``seed``) and ``stop`` are the request's own
(``sampling_fields``); generation is greedy unless a request samples. What cannot be honoured
is refused, never ignored: ``n`` other than 1, ``logprobs``, tools, streaming, …
(``unsupported_parameter``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.errors import RequestError
from jobs.limits import MAX_CUSTOM_ID_CHARS, MAX_LINE_NESTING, MAX_MODEL_CHARS, check_text
from jobs.submit.batch_format import BatchFormat as BatchFormat
from model.engine import ANY_JSON_OBJECT, MAX_TEMPERATURE, SEED_RANGE
from model.nesting import NestingError, loads_bounded

CHAT_COMPLETIONS = "/v1/chat/completions"
UNSUPPORTED = "unsupported_parameter"
MALFORMED = "manifest_invalid"
MAX_STOP_CHARS = 256
TOO_MANY_IMAGES = "too_many_images"
NO_IMAGE = ""  # the image_url of a request of text alone
# The most images one request may carry: each is read, decoded and encoded like a whole
# single-image request, and their image tokens share one context. A request over it fails on
# its own item at submit (``too_many_images``); a model whose template takes one image fails
# a request of several on its item (``images_not_supported``, judged by the worker).
MAX_IMAGES_PER_REQUEST = 8
IMAGES_NOT_SUPPORTED = "images_not_supported"


def images_refusal(count: int, model: str, takes: int) -> str:
    """Why a request of ``count`` images cannot run on ``model``, which takes ``takes``."""
    return (
        f"The request carries {count} images; model {model!r} takes {takes} per request (its "
        "chat template shows one image)."
    )


# Options this engine does not take, each with the values that change nothing (the first is the
# one a refusal suggests); an empty list or object is neutral where () is listed.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "top_k": (0, -1),
    "min_p": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "repetition_penalty": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "stream": (False,),
    "logit_bias": ((),),
    "tools": ((),),
    "functions": ((),),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
}
# Fields that change nothing about what is generated here.
_IGNORED = frozenset(
    {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
)
_SAMPLING = ("temperature", "top_p", "seed", "stop")
_UNDERSTOOD = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "response_format", *_SAMPLING}
)
MAX_STOP_STRINGS = 4  # OpenAI's bound
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


@dataclass(frozen=True)
class BatchLine:
    """One request: its custom id, model, image references (as written, in order; none for
    text alone) and the chat item's fields (``messages`` as ``{"role", "text"}``, optional
    ``max_tokens``, ``schema`` and ``sampling``)."""

    custom_id: str
    model: str
    image_urls: tuple[str, ...]
    request: dict[str, Any]

    @property
    def image_url(self) -> str:
        """The first image (``NO_IMAGE`` for text alone): the item's own input."""
        return self.image_urls[0] if self.image_urls else NO_IMAGE


def looks_like_openai(entry: object) -> bool:
    """True for a line shaped like an OpenAI-Batch request rather than a manifest line."""
    return isinstance(entry, dict) and "input" not in entry and ("body" in entry or "url" in entry)


def detect_openai(lines: Sequence[str]) -> bool:
    """Whether a file is OpenAI-Batch JSONL, judged from its first non-empty line (a line that
    is not JSON leaves it to the manifest parser, which reports it)."""
    for line in lines:
        if line.strip():
            try:
                return looks_like_openai(loads_bounded(line, MAX_LINE_NESTING))
            except (json.JSONDecodeError, NestingError):
                return False
    return False


def parse_openai_line(line: str, where: str) -> BatchLine:
    """One line of an OpenAI-Batch file; RequestError (``manifest_invalid``,
    ``unsupported_parameter``, ``invalid_custom_id``) otherwise."""
    try:
        entry = loads_bounded(line, MAX_LINE_NESTING)
    except NestingError as exc:
        raise RequestError(f"{where}: the line is not supported: {exc}.", code=MALFORMED) from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"{where}: not valid JSON ({exc.msg}).", code=MALFORMED) from None
    if not isinstance(entry, dict):
        raise RequestError(f"{where}: expected a JSON object.", code=MALFORMED)
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise RequestError(f'{where}: "custom_id" must be a non-empty string.', code=MALFORMED)
    check_text(
        custom_id,
        what=f"{where}: custom_id",
        code="invalid_custom_id",
        max_chars=MAX_CUSTOM_ID_CHARS,
    )
    if entry.get("method", "POST") != "POST":
        raise RequestError(f'{where}: "method" must be "POST".', code=MALFORMED)
    if not isinstance(entry.get("url"), str):
        raise RequestError(f'{where}: "url" must be "{CHAT_COMPLETIONS}".', code=MALFORMED)
    if entry["url"] != CHAT_COMPLETIONS:
        raise RequestError(
            f'{where}: "url" {entry.get("url")!r} is not supported; only {CHAT_COMPLETIONS} is.',
            code=UNSUPPORTED,
        )
    body = entry.get("body")
    if not isinstance(body, dict):
        raise RequestError(f'{where}: "body" must be an object.', code=MALFORMED)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError(f'{where}: body "model" must be a non-empty string.', code=MALFORMED)
    check_text(model, what=f"{where}: model", code=MALFORMED, max_chars=MAX_MODEL_CHARS)
    _check_options(body, where)
    image_urls, messages = _messages(body.get("messages"), where)
    request: dict[str, Any] = {"messages": messages}
    max_tokens = _max_tokens(body, where)
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    schema = _schema(body.get("response_format"), where)
    if schema is not None:
        request["schema"] = schema
    sampling = sampling_fields(body, where)
    if sampling:
        request["sampling"] = sampling
    return BatchLine(custom_id=custom_id, model=model, image_urls=image_urls, request=request)


def _check_options(body: Mapping[str, Any], where: str) -> None:
    for key, value in body.items():
        if key in _UNDERSTOOD or key in _IGNORED:
            continue
        if key not in _NEUTRAL:
            raise RequestError(f"{where}: body {key!r} is not supported.", code=UNSUPPORTED)
        if _is_neutral(value, _NEUTRAL[key]):
            continue
        shown = json.dumps(value)[:80]
        neutral = _NEUTRAL[key][0]
        instead = f" or set it to {json.dumps(neutral)}" if neutral != () else ""
        raise RequestError(
            f"{where}: {key} {shown} is refused: it is not supported here; remove it{instead}.",
            code=UNSUPPORTED,
        )


def sampling_fields(given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The sampling a request asks for (``model.engine.Sampling``'s fields), checked: an empty
    dict is greedy. OpenAI's defaults differ on purpose: without a ``temperature`` generation is
    greedy, unless a ``top_p`` below 1 asks for sampling (then at temperature 1, OpenAI's)."""
    fields: dict[str, Any] = {}
    temperature, top_p = given.get("temperature"), given.get("top_p")
    for key, value, low, high in (
        ("temperature", temperature, 0, MAX_TEMPERATURE),
        ("top_p", top_p, 0, 1),
    ):
        if value is None:
            continue
        if not _is_number(value) or not low <= value <= high or (key == "top_p" and value == 0):
            shown = "above 0 and at most 1" if key == "top_p" else f"from 0 to {high:g}"
            raise RequestError(f"{where}: {key} must be a number {shown}.", code=MALFORMED)
    if temperature is not None and temperature > 0:
        fields["temperature"] = float(temperature)
    elif temperature is None and top_p is not None and top_p < 1:
        fields["temperature"] = 1.0
    if "temperature" in fields and top_p is not None and top_p < 1:
        fields["top_p"] = float(top_p)
    seed = given.get("seed")
    if seed is not None:
        if not _is_integer(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise RequestError(f"{where}: seed must be a 64-bit integer.", code=MALFORMED)
        if "temperature" in fields:  # greedy decoding draws nothing: a seed changes nothing
            fields["seed"] = seed
    stop = given.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None:
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise RequestError(
                f"{where}: stop must be a non-empty string or a list of up to "
                f"{MAX_STOP_STRINGS} of them.",
                code=MALFORMED,
            )
        for text in stops:
            check_text(text, what=f"{where}: stop", code=MALFORMED, max_chars=MAX_STOP_CHARS)
        if stops:
            fields["stop"] = list(dict.fromkeys(stops))
    return fields


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    if value is None:
        return True
    if isinstance(value, list | dict):
        return not value and () in neutral
    if isinstance(value, bool) or any(isinstance(n, bool) for n in neutral):
        return any(n is value for n in neutral)  # True is not 1, False is not 0
    return any(type(n) is not tuple and n == value for n in neutral)


def _messages(given: Any, where: str) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    """The chat turns and the images, in order (none for text alone; all in the first user
    message, where the chat template shows them). How many a request may carry is judged per
    line by the caller (``MAX_IMAGES_PER_REQUEST``)."""
    if not isinstance(given, list) or not given:
        raise RequestError(f'{where}: body "messages" must be a non-empty list.', code=MALFORMED)
    turns: list[dict[str, str]] = []
    images: list[tuple[int, str]] = []  # (turn index, url)
    for number, message in enumerate(given, start=1):
        at = f"{where}, message {number}"
        if not isinstance(message, dict):
            raise RequestError(f"{at}: expected an object.", code=MALFORMED)
        role = message.get("role")
        if role not in _ROLES:
            if isinstance(role, str) and role in ("tool", "function"):
                raise RequestError(f"{at}: {role} messages are not supported.", code=UNSUPPORTED)
            raise RequestError(
                f"{at}: the role must be system, developer, user or assistant.", code=MALFORMED
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise RequestError(f"{at}: tool calls are not supported.", code=UNSUPPORTED)
        texts, urls = _content(message.get("content"), at)
        if urls and role != "user":
            raise RequestError(f"{at}: an image must be in a user message.", code=MALFORMED)
        images.extend((len(turns), url) for url in urls)
        turns.append({"role": _ROLES[role], "text": "\n".join(texts)})
    if not images:
        return (), turns  # a conversation of text alone
    first_user = next(i for i, t in enumerate(turns) if t["role"] == "user")
    if any(index != first_user for index, _ in images):
        raise RequestError(
            f"{where}: the images must be in the first user message (the chat template shows "
            "them there).",
            code=MALFORMED,
        )
    return tuple(url for _, url in images), turns


def _content(content: Any, at: str) -> tuple[list[str], list[str]]:
    """The text parts and image URLs of one message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list) or not content:
        raise RequestError(f"{at}: content must be a string or a list of parts.", code=MALFORMED)
    texts: list[str] = []
    urls: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.strip():
                raise RequestError(f'{at}: an image_url part needs a "url".', code=MALFORMED)
            urls.append(url)
        elif isinstance(kind, str) and kind != "text":
            raise RequestError(f"{at}: {kind!r} parts are not supported.", code=UNSUPPORTED)
        else:
            raise RequestError(f'{at}: a part needs a "type" (and text).', code=MALFORMED)
    return texts, urls


def _max_tokens(body: Mapping[str, Any], where: str) -> int | None:
    given = {k: body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None}
    for key, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RequestError(f"{where}: {key} must be a positive integer.", code=MALFORMED)
    if len(set(given.values())) > 1:
        raise RequestError(
            f"{where}: max_tokens and max_completion_tokens disagree.", code=MALFORMED
        )
    return next(iter(given.values()), None)


def _schema(response_format: Any, where: str) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(
                f'{where}: response_format json_schema needs a "schema" object.', code=MALFORMED
            )
        return schema
    if kind == "json_object":
        return dict(ANY_JSON_OBJECT)
    raise RequestError(
        f"{where}: response_format must be text, json_object or json_schema.",
        code=UNSUPPORTED if isinstance(kind, str) else MALFORMED,
    )


def decode_data_uri(url: str, where: str, max_bytes: int) -> tuple[bytes, str, str]:
    """The bytes of a ``data:image/…;base64,`` URI, with a file suffix for its media type and
    the media type; refused when malformed, empty or over ``max_bytes`` (judged from its length
    before decoding)."""
    header, comma, payload = url[len("data:") :].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0]
    if not comma or not mime.startswith("image/") or "base64" not in params[1:]:
        raise RequestError(f"{where}: a data: URI must be data:image/…;base64,… .", code=MALFORMED)
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise RequestError(
            f"{where}: the data: image is over the input limit of {max_bytes} bytes "
            "(LLAVA_BATCH_MAX_INPUT_BYTES).",
            code="input_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: the data: URI is not valid base64.", code=MALFORMED) from None
    if not data:
        raise RequestError(f"{where}: the data: image is empty (0 bytes).", code="empty_input")
    if len(data) > max_bytes:
        raise RequestError(
            f"{where}: the data: image has {len(data)} bytes, over the input limit of "
            f"{max_bytes} bytes (LLAVA_BATCH_MAX_INPUT_BYTES).",
            code="input_too_large",
        )
    return data, _IMAGE_SUFFIXES.get(mime, ""), mime
