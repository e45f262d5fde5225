"""OpenAI-Batch sampling settings and json_object output, per request, through the real
pipeline and the real tiny transformers model, on SQLite and PostgreSQL. Each line's body is
checked against the openai package's own request type: exactly what an OpenAI user writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionUserMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter
from sqlalchemy import select

from jobs.db import Item, SessionFactory
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.request import SubmitRequest
from model.engine import Engine, EngineSpec, GenerationRequest, Turn
from storage import Blobs
from tests.helpers import make_resources, write_images
from workers.local import run_job_locally

MODEL = "tiny-llava"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from model.transformers_engine import load_engine

    cache = tmp_path_factory.mktemp("m")
    return load_engine(EngineSpec(model=MODEL, cache_dir=cache, device="cpu"))


def _user(image: str, text: str = "Describe the product.") -> ChatCompletionUserMessageParam:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image}},
        ],
    }


def _line(custom_id: str, body: CompletionCreateParamsNonStreaming) -> str:
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _run(
    sf: SessionFactory,
    blobs: Blobs,
    engine: Engine,
    folder: Path,
    lines: dict[str, Any],
    *,
    all_succeed: bool = True,
) -> dict[str, Item]:
    batch = folder / f"requests-{len(list(folder.glob('*.jsonl')))}.jsonl"
    batch.write_text("".join(_line(cid, body) + "\n" for cid, body in lines.items()))
    request = SubmitRequest.of("chat", [str(batch)], MODEL, input_format=BatchFormat.auto)
    res = make_resources(sf, blobs, engine, gpu_batch_size=8)
    result = run_job_locally(request, res, max_prompt_chars=4000)
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == result.job_id)).all()
    found = {item.custom_id: item for item in items if item.custom_id}
    for item in found.values() if all_succeed else ():
        assert item.status == "succeeded", (item.custom_id, item.error_message)
    return found


def _body(image: str, **given: Any) -> CompletionCreateParamsNonStreaming:
    return {"model": MODEL, "messages": [_user(image)], "max_completion_tokens": 16, **given}


def test_each_request_samples_as_it_asks_and_a_seed_repeats(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "photos", 2)
    a, b = "photos/img000.png", "photos/img001.png"
    seeded = {"temperature": 1.3, "top_p": 0.95, "seed": 99}
    first = _run(
        session_factory,
        blobs,
        tiny,
        tmp_path,
        {
            "greedy": _body(a),
            "greedy-again": _body(a, seed=5),  # a seed without a temperature: still greedy
            "seeded": _body(a, **seeded),
            "seeded-twin": _body(a, **seeded),  # the same request in the same batch
            **{f"hot-{seed}": _body(a, temperature=1.5, seed=seed) for seed in range(4)},
            "neighbour": _body(b, temperature=0.6),
            "short": _body(b, max_completion_tokens=3),
        },
    )
    assert first["greedy"].result_text == first["greedy-again"].result_text
    assert first["seeded"].result_text == first["seeded-twin"].result_text
    hot = {first[f"hot-{seed}"].result_text for seed in range(4)}
    assert len(hot) > 1 and hot - {first["greedy"].result_text}
    assert first["short"].tokens_out == 3 and first["short"].finish_reason == "length"
    assert first["seeded"].request["sampling"] == {**seeded, "temperature": 1.3}
    assert "sampling" not in first["greedy"].request

    # The seeded request alone, in another job, other neighbours: the same text.
    again = _run(session_factory, blobs, tiny, tmp_path, {"seeded": _body(a, **seeded)})
    assert again["seeded"].result_text == first["seeded"].result_text


def test_a_stop_string_ends_the_text_before_it(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "photos", 1)
    image = "photos/img000.png"
    full = _run(session_factory, blobs, tiny, tmp_path, {"full": _body(image)})["full"]
    assert full.result_text and len(full.result_text) > 8
    stop = full.result_text[4:7]
    cut = full.result_text[: full.result_text.index(stop)].strip()
    stopped = _run(
        session_factory,
        blobs,
        tiny,
        tmp_path,
        {"stopped": _body(image, stop=[stop, "never there"]), "free": _body(image)},
    )
    assert stopped["stopped"].result_text == cut
    assert stopped["stopped"].finish_reason == "stop"
    assert stopped["stopped"].tokens_out < full.tokens_out
    assert stopped["free"].result_text == full.result_text


def test_json_object_output_is_an_object_or_a_truncation(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "photos", 1)
    image = "photos/img000.png"
    json_object: Any = {"type": "json_object"}
    items = _run(
        session_factory,
        blobs,
        tiny,
        tmp_path,
        {
            **{
                f"obj-{seed}": _body(
                    image,
                    response_format=json_object,
                    temperature=2.0,
                    seed=seed,
                    max_completion_tokens=48,
                )
                for seed in range(8)
            },
            "obj-greedy": _body(image, response_format=json_object, max_completion_tokens=6),
        },
        all_succeed=False,
    )
    done = [item for item in items.values() if item.status == "succeeded"]
    assert done, {item.custom_id: item.result_text for item in items.values()}
    for item in done:
        assert isinstance(item.result_json, dict)
        assert json.loads(item.result_text) == item.result_json
    for item in items.values():
        if item.status != "succeeded":
            assert item.error_code == "output_truncated", (item.custom_id, item.error_message)
    assert items["obj-greedy"].error_code == "output_truncated"


def test_a_request_of_text_alone_runs_beside_ones_with_images(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "photos", 1)
    text_alone: CompletionCreateParamsNonStreaming = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Name a colour."},
        ],
        "max_completion_tokens": 6,
    }
    items = _run(
        session_factory,
        blobs,
        tiny,
        tmp_path,
        {"text": text_alone, "image": _body("photos/img000.png"), "text-2": text_alone},
    )
    text, image = items["text"], items["image"]
    assert text.source == "" and text.input_uri == "" and text.input_sha256 is None
    assert text.result_text and text.result_text == items["text-2"].result_text
    # What the model says to that conversation with no image at all.
    turns = [Turn("system", "Answer in one word."), Turn("user", "Name a colour.")]
    (expected,) = tiny.generate([GenerationRequest(None, turns)], max_new_tokens=6)
    assert text.result_text == expected.text and text.prompt_tokens == expected.tokens_in
    assert image.input_sha256  # the image, stored; nothing stored for text alone
