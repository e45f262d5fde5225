"""OpenAI-Batch requests of several images, through submit, the real pipeline (fake engine) and
the OpenAI output, on SQLite and PostgreSQL: one item shows the model every image in order,
each read under the budgets of one; what cannot run fails its own line alone."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter
from sqlalchemy import select

from jobs.cli.views import ResultFormat, write_results
from jobs.db import Item, ItemInput, SessionFactory
from jobs.errors import RequestError
from jobs.fleet import Serving, beat_worker
from jobs.submit.job import submit_job
from jobs.submit.openai_reader import MAX_IMAGES_PER_REQUEST, BatchFormat
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import Blobs, LocalStore
from tests.helpers import ListPublisher, image_bytes, make_resources
from workers.local import run_job_locally

MODEL = "tiny-llava"


def _data_uri(size: tuple[int, int], seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(size, seed=seed)).decode()


def _line(custom_id: str, urls: list[str], text: str = "What differs?") -> str:
    """A line whose body the openai package's own request type accepts."""
    parts: list[Any] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    body: CompletionCreateParamsNonStreaming = {
        "model": MODEL,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 16,
    }
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _run(
    sf: SessionFactory, blobs: Blobs, folder: Path, lines: list[str], engine: FakeEngine, **kw: Any
) -> tuple[str, dict[str, Item]]:
    (folder / "batch.jsonl").write_text("".join(line + "\n" for line in lines))
    request = SubmitRequest.of(
        "chat", [str(folder / "batch.jsonl")], MODEL, input_format=BatchFormat.auto
    )
    res = make_resources(sf, blobs, engine, **kw)
    job_id = run_job_locally(request, res, max_prompt_chars=4000).job_id
    return job_id, _items(sf, job_id)


def _submit(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> str:
    """Submits ``request`` (nothing runs it); its job's id."""
    result = submit_job(
        request, session_factory=sf, blobs=blobs, publisher=ListPublisher(), max_prompt_chars=4000
    )
    return result.job_id


def _items(sf: SessionFactory, job_id: str) -> dict[str, Item]:
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == job_id))
        return {item.custom_id or "": item for item in items}


def _other_inputs(sf: SessionFactory, item_id: str) -> list[tuple[int, str, str | None]]:
    with sf() as session:
        rows = session.scalars(
            select(ItemInput).where(ItemInput.item_id == item_id).order_by(ItemInput.position)
        )
        return [(row.position, row.uri, row.sha256) for row in rows]


def test_a_request_of_several_images_runs_as_one_item_with_every_image_in_order(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    s3_bucket: str,
    s3_client: Any,
) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    s3_client.put_object(Bucket=s3_bucket, Key="c.png", Body=image_bytes((20, 10), seed=3))
    three = ["a.png", _data_uri((40, 30), 2), f"s3://{s3_bucket}/c.png"]
    too_many = ["a.png"] * (MAX_IMAGES_PER_REQUEST + 1)
    lines = [
        _line("three", three),
        _line("one", ["a.png"], "Describe it."),
        _line("too-many", too_many),
        _line("web-second", ["a.png", "https://example.com/b.png"]),
    ]
    job_id, items = _run(session_factory, blobs, tmp_path, lines, FakeEngine())

    several = items["three"]
    assert several.status == "succeeded", several.error_message
    # The fake engine names each image it was shown, in order: all three reached the model.
    assert several.result_text == "caption of 32x24 and 40x30 and 20x10 images: What differs?"
    assert several.prompt_tokens == 3 + 2  # one per image, and the words
    assert several.source == "a.png" and several.input_sha256  # the item's input: the first
    others = _other_inputs(session_factory, several.id)
    assert [(p, sha is not None) for p, _, sha in others] == [(1, True), (2, False)]
    assert others[1][1] == f"s3://{s3_bucket}/c.png"  # read in place, not ours to collect
    assert several.request["more_images"] == [uri for _, uri, _ in others]
    assert blobs.read_uri(others[0][1]) == base64.b64decode(three[1].split(",", 1)[1])

    assert items["one"].result_text == "caption of 32x24 image: Describe it."
    assert _other_inputs(session_factory, items["one"].id) == []
    refused = items["too-many"]
    assert (refused.status, refused.error_code) == ("failed", "too_many_images")
    assert f"{MAX_IMAGES_PER_REQUEST + 1} images" in (refused.error_message or "")
    web = items["web-second"]
    assert (web.status, web.error_code) == ("failed", "input_scheme_not_allowed")

    out = tmp_path / "out.jsonl"
    with session_factory() as session:
        write_results(session, job_id, ResultFormat.openai, str(out))
    written = {
        json.loads(line)["custom_id"]: json.loads(line) for line in out.read_text().splitlines()
    }
    response = written["three"]["response"]
    assert response["status_code"] == 200
    completion = ChatCompletion.model_validate(response["body"])
    assert completion.choices[0].message.content == several.result_text
    too_many_response = written["too-many"]["response"]
    assert too_many_response["status_code"] == 400  # the request's fault, as OpenAI says it
    assert too_many_response["body"]["error"]["code"] == "too_many_images"


def test_a_model_that_takes_one_image_fails_only_the_requests_of_several(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    lines = [
        _line("two", ["a.png", _data_uri((40, 30), 2)]),
        _line("one", ["a.png"], "Describe it."),
    ]
    _, items = _run(session_factory, blobs, tmp_path, lines, FakeEngine(max_images=1))
    two = items["two"]
    assert (two.status, two.error_code) == ("failed", "images_not_supported")
    assert "takes 1 per request" in (two.error_message or "")
    assert items["one"].status == "succeeded"


def test_each_image_is_judged_by_the_budgets_of_one(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A second image over the per-image pixel limit fails its item, as a first one would;
    the item's images together are held to LLAVA_BATCH_MAX_ITEM_PIXELS."""
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    lines = [
        _line("big-second", ["a.png", _data_uri((100, 100), 2)]),
        _line("small", ["a.png", _data_uri((40, 30), 3)]),
    ]
    _, items = _run(session_factory, blobs, tmp_path, lines, FakeEngine(), max_image_pixels=5_000)
    assert (items["big-second"].status, items["big-second"].error_code) == (
        "failed",
        "image_too_large",
    )
    assert items["small"].status == "succeeded"
    (tmp_path / "sub").mkdir()
    _, together = _run(
        session_factory,
        blobs,
        tmp_path / "sub",
        [_line("pair", [_data_uri((40, 30), 4), _data_uri((40, 30), 5)])],
        FakeEngine(),
        max_item_pixels=2_000,
    )
    assert (together["pair"].status, together["pair"].error_code) == ("failed", "image_too_large")
    assert "together" in (together["pair"].error_message or "")


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_bad_image_fails_its_own_line_and_nothing_else(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, where: str
) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    empty = "data:image/png;base64,"
    urls = [empty, "a.png"] if where == "first" else ["a.png", empty]
    lines = [_line("bad", urls), _line("good", ["a.png", "a.png"])]
    _, items = _run(session_factory, blobs, tmp_path, lines, FakeEngine())
    assert (items["bad"].status, items["bad"].error_code) == ("failed", "empty_input")
    assert items["good"].result_text == "caption of 32x24 and 32x24 images: What differs?"


def test_a_request_of_more_images_than_the_registry_says_is_written_failed_at_submit(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The workers of a model say in the registry how many images it takes (their beat); a
    submit writes a request of more failed on its own line, nothing of its images stored, and
    the rest of the file runs. Where one worker takes several, nothing is refused at submit."""
    worker = make_resources(session_factory, blobs, FakeEngine(max_images=1), model=MODEL)
    worker.serves_model = True  # as a deployment's worker: it beats for MODEL
    assert worker.serving is not None and worker.serving.max_images == 1
    beat_worker(session_factory, "gpu-1@host", worker.serving)
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    second = _data_uri((40, 30), 2)
    lines = [_line("two", ["a.png", second]), _line("one", ["a.png"], "Describe it.")]
    (tmp_path / "batch.jsonl").write_text("".join(line + "\n" for line in lines))
    request = SubmitRequest.of(
        "chat", [str(tmp_path / "batch.jsonl")], "the-configured-model", input_format="auto"
    )
    items = _items(session_factory, _submit(session_factory, blobs, request))
    two = items["two"]
    assert (two.status, two.error_code) == ("failed", "images_not_supported")
    assert "batch.jsonl, line 1" in (two.error_message or "")
    assert "takes 1 per request" in (two.error_message or "")
    assert _other_inputs(session_factory, two.id) == [] and two.input_sha256 is None
    assert items["one"].status == "queued"
    assert isinstance(blobs.store, LocalStore)
    stored = " ".join(str(p) for p in blobs.store.root.rglob("*"))
    never = hashlib.sha256(base64.b64decode(second.split(",", 1)[1])).hexdigest()
    assert never not in stored  # the refused request's second image was never stored

    beat_worker(session_factory, "gpu-2@host", Serving(MODEL, None, "none", max_images=None))
    items = _items(session_factory, _submit(session_factory, blobs, request))
    assert items["two"].status == "queued"
    assert len(_other_inputs(session_factory, items["two"].id)) == 1


def test_an_idempotency_key_stands_for_every_image_of_a_request(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The same file with the same key is the same job; the file with another second image is
    another request (``idempotency_conflict``), never the old job."""
    (tmp_path / "a.png").write_bytes(image_bytes((32, 24), seed=1))
    batch = tmp_path / "batch.jsonl"
    request = SubmitRequest.of(
        "chat", [str(batch)], MODEL, input_format=BatchFormat.auto, idempotency_key="k"
    )
    batch.write_text(_line("pair", ["a.png", _data_uri((40, 30), 2)]) + "\n")
    first = _submit(session_factory, blobs, request)
    assert _submit(session_factory, blobs, request) == first
    batch.write_text(_line("pair", ["a.png", _data_uri((40, 30), 3)]) + "\n")
    with pytest.raises(RequestError) as conflict:
        _submit(session_factory, blobs, request)
    assert conflict.value.code == "idempotency_conflict"
