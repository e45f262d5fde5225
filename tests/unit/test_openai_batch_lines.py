"""OpenAI-Batch lines onto chat items (pure parsing, no services): what maps, what is refused
with which code, and data: URIs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionUserMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from jobs.errors import RequestError
from jobs.submit.openai_reader import (
    NO_IMAGE,
    decode_data_uri,
    detect_openai,
    parse_openai_line,
)
from storage import SchemeNotAllowedError, open_blobs, uri_scheme

IMAGE = {"type": "image_url", "image_url": {"url": "photos/a.png", "detail": "low"}}


def _line(**body: Any) -> str:
    fields: dict[str, Any] = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Caption."}, IMAGE]}],
    }
    fields.update(body)
    return json.dumps(
        {"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": fields}
    )


def _refused(line: str) -> RequestError:
    with pytest.raises(RequestError) as refused:
        parse_openai_line(line, "b.jsonl, line 7")
    assert refused.value.message.startswith("b.jsonl, line 7"), refused.value.message
    return refused.value


def test_a_caption_request_maps_onto_one_user_turn_with_its_image() -> None:
    parsed = parse_openai_line(_line(max_completion_tokens=40, temperature=0), "w")
    assert parsed.custom_id == "r-1" and parsed.model == "llava-hf/llava-1.5-7b-hf"
    assert parsed.image_url == "photos/a.png"
    assert parsed.request == {"messages": [{"role": "user", "text": "Caption."}], "max_tokens": 40}


def test_system_turns_text_parts_and_a_schema_are_kept() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}}
    messages = [
        {"role": "developer", "content": "Answer in English."},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                IMAGE,
                {"type": "text", "text": "One word."},
            ],
        },
        {"role": "assistant", "content": "A mug."},
        {"role": "user", "content": "What colour?"},
    ]
    parsed = parse_openai_line(
        _line(
            messages=messages,
            max_tokens=12,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            top_p=1,
            n=1,
            seed=7,
            user="u",
        ),
        "w",
    )
    assert parsed.request == {
        "messages": [
            {"role": "system", "text": "Answer in English."},
            {"role": "system", "text": "Be brief."},
            {"role": "user", "text": "What is it?\nOne word."},
            {"role": "assistant", "text": "A mug."},
            {"role": "user", "text": "What colour?"},
        ],
        "max_tokens": 12,
        "schema": schema,
    }
    text_format = parse_openai_line(_line(response_format={"type": "text"}), "w")
    assert "schema" not in text_format.request


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"temperature": 2.5}, "manifest_invalid", "temperature must be a number from 0 to 2"),
        ({"temperature": True}, "manifest_invalid", "temperature"),
        ({"top_p": 0}, "manifest_invalid", "top_p"),
        ({"seed": 1.5}, "manifest_invalid", "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "manifest_invalid", "up to 4"),
        ({"stop": [""]}, "manifest_invalid", "stop"),
        ({"n": 2}, "unsupported_parameter", "n 2"),
        ({"logprobs": True}, "unsupported_parameter", "logprobs"),
        ({"top_logprobs": 3}, "unsupported_parameter", "top_logprobs"),
        ({"stream": True}, "unsupported_parameter", "stream"),
        ({"tools": [{"type": "function"}]}, "unsupported_parameter", "tools"),
        ({"frobnicate": 1}, "unsupported_parameter", "frobnicate"),
        ({"response_format": {"type": "grammar"}}, "unsupported_parameter", "json_object"),
        ({"response_format": {"type": "json_schema"}}, "manifest_invalid", "schema"),
        ({"max_tokens": 0}, "manifest_invalid", "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "manifest_invalid", "disagree"),
        ({"model": ""}, "manifest_invalid", "model"),
        ({"messages": []}, "manifest_invalid", "messages"),
        (
            {"messages": [{"role": "user", "content": [IMAGE, IMAGE]}]},
            "too_many_images",
            "has 2",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "unsupported_parameter",
            "tool messages",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Look."},
                    {"role": "assistant", "content": "Where?"},
                    {"role": "user", "content": [IMAGE]},
                ]
            },
            "manifest_invalid",
            "first user message",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [IMAGE]},
                    {"role": "user", "content": "x"},
                ]
            },
            "manifest_invalid",
            "user message",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}, IMAGE]}]},
            "unsupported_parameter",
            "input_audio",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_the_line(
    body: dict[str, Any], code: str, words: str
) -> None:
    refused = _refused(_line(**body))
    assert refused.code == code and words in refused.message, refused.message


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("{not json", "manifest_invalid"),
        ("[1]", "manifest_invalid"),
        (
            json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
            "manifest_invalid",
        ),
        (
            json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m"}}),
            "unsupported_parameter",
        ),
        (json.dumps({"custom_id": "a", "method": "GET", "body": {}}), "manifest_invalid"),
        (json.dumps({"custom_id": "a\x00", "url": "/v1/chat/completions"}), "invalid_custom_id"),
    ],
)
def test_a_malformed_line_is_refused(line: str, code: str) -> None:
    assert _refused(line).code == code


def test_the_format_is_detected_from_the_first_line() -> None:
    assert detect_openai(["", _line()])
    assert not detect_openai(['{"input": "a.png", "messages": []}'])
    assert not detect_openai(["{oops"])


def test_data_uris_decode_within_the_limit() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 40
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_data_uri(url, "w", 1000) == (png, ".png", "image/png")
    assert decode_data_uri(url.replace("image/png", "image/heic"), "w", 1000)[1] == ""
    for bad, code in [
        ("data:text/plain;base64,aGk=", "manifest_invalid"),
        ("data:image/png,rawbytes", "manifest_invalid"),
        ("data:image/png;base64,***", "manifest_invalid"),
        ("data:image/png;base64,", "empty_input"),
    ]:
        with pytest.raises(RequestError) as refused:
            decode_data_uri(bad, "w", 1000)
        assert refused.value.code == code, bad
    with pytest.raises(RequestError) as too_large:
        decode_data_uri(url, "w", 10)
    assert too_large.value.code == "input_too_large"
    with pytest.raises(RequestError) as judged_from_length:  # never decoded
        decode_data_uri("data:image/png;base64," + "A" * 4000, "w", 100)
    assert judged_from_length.value.code == "input_too_large"


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("https://example.com/a.png", "https"),
        ("HTTP://x", "http"),
        ("data:image/png;base64,AA==", "data"),
        ("s3://bucket/key", "s3"),
        ("file:///etc/passwd", "file"),
        ("photos/a.png", None),
        ("./a:b.png", None),
        ("C:/photos/a.png", None),
    ],
)
def test_uri_scheme(text: str, scheme: str | None) -> None:
    assert uri_scheme(text) == scheme


def test_storage_never_reads_a_network_url(tmp_path: Path) -> None:
    blobs = open_blobs(str(tmp_path / "blobs"))
    for url in ("https://example.com/a.png", "http://10.0.0.1/x", "ftp://h/x", "gs://b/k"):
        with pytest.raises(SchemeNotAllowedError) as refused:
            blobs.read_uri(url)
        assert refused.value.code == "input_scheme_not_allowed"
        assert "never read" in str(refused.value)


def _typed(body: CompletionCreateParamsNonStreaming) -> str:
    """A line whose body the openai package's own request type accepts: what an OpenAI user
    writes."""
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)  # raises if not
    line = {"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


_USER: ChatCompletionUserMessageParam = {
    "role": "user",
    "content": [
        {"type": "text", "text": "Caption."},
        {"type": "image_url", "image_url": {"url": "photos/a.png"}},
    ],
}


def test_sampling_and_stop_are_the_requests_own() -> None:
    parsed = parse_openai_line(
        _typed(
            {
                "model": "llava-hf/llava-1.5-7b-hf",
                "messages": [_USER],
                "temperature": 0.8,
                "top_p": 0.9,
                "seed": 42,
                "stop": ["\n", "END"],
                "max_completion_tokens": 20,
            }
        ),
        "w",
    )
    assert parsed.request["sampling"] == {
        "temperature": 0.8,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n", "END"],
    }
    assert parsed.request["max_tokens"] == 20


@pytest.mark.parametrize(
    ("given", "sampling"),
    [
        ({}, None),  # greedy: OpenAI's default temperature of 1 is not ours
        ({"temperature": 0, "top_p": 0.5, "seed": 3}, None),  # greedy draws nothing
        ({"seed": 3}, None),
        ({"top_p": 0.5}, {"temperature": 1.0, "top_p": 0.5}),  # OpenAI's temperature then
        ({"temperature": 1.2, "top_p": 1}, {"temperature": 1.2}),
        ({"stop": "###"}, {"stop": ["###"]}),
        ({"stop": None, "temperature": None}, None),
    ],
)
def test_greedy_stays_the_default(given: dict[str, Any], sampling: dict[str, Any] | None) -> None:
    body: CompletionCreateParamsNonStreaming = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "messages": [_USER],
        **given,  # type: ignore[typeddict-item]
    }
    assert parse_openai_line(_typed(body), "w").request.get("sampling") == sampling


@pytest.mark.parametrize(
    "given",
    [
        {"n": 2},
        {"logprobs": True},
        {"top_logprobs": 2, "logprobs": True},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
    ],
)
def test_n_logprobs_and_tools_still_refuse_the_line(given: dict[str, Any]) -> None:
    body: CompletionCreateParamsNonStreaming = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "messages": [_USER],
        **given,  # type: ignore[typeddict-item]
    }
    refused = _refused(_typed(body))
    assert refused.code == "unsupported_parameter", refused.message


def test_json_object_asks_for_any_object() -> None:
    body: CompletionCreateParamsNonStreaming = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "messages": [_USER],
        "response_format": {"type": "json_object"},
    }
    assert parse_openai_line(_typed(body), "w").request["schema"] == {"type": "object"}


def test_a_request_of_text_alone_has_no_image() -> None:
    body: CompletionCreateParamsNonStreaming = {
        "model": "llava-hf/llava-1.5-7b-hf",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
        ],
    }
    parsed = parse_openai_line(_typed(body), "w")
    assert parsed.image_url == NO_IMAGE
    assert parsed.request["messages"] == [
        {"role": "system", "text": "Be brief."},
        {"role": "user", "text": "Name a colour."},
    ]
