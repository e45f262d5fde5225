"""The ``ask`` kind through the real pipeline (fake engine), on SQLite and PostgreSQL:
independent questions batched over one image, a conversation whose turns see the earlier
answers, questions per item from a manifest, per-question failures, CSV one row per question."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs.cli.views import ResultFormat, write_results
from jobs.db import Item, Job, SessionFactory
from jobs.errors import RequestError
from jobs.submit.request import SubmitRequest
from model.engine import GenerationRequest, GenerationResult
from model.errors import InputError
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import make_resources, write_images
from workers.local import run_job_locally

QUESTIONS = ["What brand?", "Is there text on the pack?", "What colour?"]


class PickyEngine(FakeEngine):
    """Refuses any request whose question says so, as a real engine refuses one too long."""

    def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> list[GenerationResult]:
        if any("REFUSE" in r.prompt for r in requests):
            raise InputError("prompt_too_long", "The question does not fit the context.")
        return super().generate(requests, **kw)


def _ask(sources: list[str], **kw: Any) -> SubmitRequest:
    fields: dict[str, Any] = dict(questions=QUESTIONS, max_new_tokens=32, batch_size=8)
    fields.update(kw)
    return SubmitRequest.of("ask", sources, "fake", **fields)


def _rows(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def test_independent_questions_are_batched_over_each_image(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 2)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    result = run_job_locally(_ask([str(tmp_path / "c")]), res, max_prompt_chars=1000)
    assert engine.calls == [6]  # 2 images x 3 questions in one model batch
    for item in _rows(session_factory, result.job_id):
        assert item.status == "succeeded", item.error_message
        answers = item.result_json
        assert [a["question"] for a in answers] == QUESTIONS
        for answer, question in zip(answers, QUESTIONS, strict=True):
            assert answer["answer"].endswith(f"image: {question}")


def test_a_conversation_asks_each_question_in_the_context_of_the_answers_before(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 2)
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    request = _ask([str(tmp_path / "c")], conversation=True)
    result = run_job_locally(request, res, max_prompt_chars=1000)
    assert engine.calls == [2, 2, 2]  # turn by turn, both images' conversations together
    for item in _rows(session_factory, result.job_id):
        answers = [a["answer"] for a in item.result_json]
        assert answers[0].endswith(QUESTIONS[0])
        assert answers[1].endswith("(after 1 answer)")
        assert answers[2].endswith("(after 2 answers)")


def test_a_manifest_gives_each_item_its_own_questions(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"input": paths[0].name, "questions": ["Only this?"]})
        + "\n"
        + json.dumps({"input": paths[1].name})
        + "\n"
    )
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    result = run_job_locally(_ask([str(manifest)]), res, max_prompt_chars=1000)
    own, default = _rows(session_factory, result.job_id)
    assert [a["question"] for a in own.result_json] == ["Only this?"]
    assert [a["question"] for a in default.result_json] == QUESTIONS
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": paths[0].name, "questions": "not a list"}) + "\n")
    with pytest.raises(RequestError) as refused:
        run_job_locally(_ask([str(bad)]), res, max_prompt_chars=1000)
    assert refused.value.code == "manifest_invalid" and "line 1" in refused.value.message


def test_a_failed_question_is_reported_alone_and_fails_its_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    questions = ["What brand?", "REFUSE this one", "What colour?"]
    res = make_resources(session_factory, blobs, PickyEngine(), gpu_batch_size=8)
    result = run_job_locally(
        _ask([str(tmp_path / "c")], questions=questions), res, max_prompt_chars=1000
    )
    (item,) = _rows(session_factory, result.job_id)
    assert item.status == "failed" and item.error_code == "prompt_too_long"
    assert item.error_message is not None and item.error_message.startswith("Question 2:")
    first, refused, third = item.result_json
    assert first["answer"] and third["answer"]
    assert refused["answer"] is None and refused["error_code"] == "prompt_too_long"

    out = tmp_path / "answers.csv"
    with session_factory() as session:
        write_results(session, result.job_id, ResultFormat.csv, str(out))
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["question_index"] for r in rows] == ["0", "1", "2"]
    assert [r["question"] for r in rows] == questions
    assert rows[1]["error_code"] == "prompt_too_long" and rows[0]["answer"]


def test_ask_needs_questions(session_factory: SessionFactory, blobs: Blobs, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    res = make_resources(session_factory, blobs, FakeEngine())
    for questions, code in (([], "invalid_questions"), (["  "], "empty_prompt")):
        with pytest.raises(RequestError) as refused:
            run_job_locally(
                _ask([str(tmp_path / "c")], questions=questions), res, max_prompt_chars=1000
            )
        assert refused.value.code == code
    with session_factory() as session:
        assert session.scalars(select(Job.id)).all() == []


def test_chat_items_each_carry_their_own_conversation_budget_and_schema(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The chat kind (what an OpenAI-Batch line becomes): per item turns, max_tokens and schema;
    items with different settings go to different model batches."""
    paths = write_images(tmp_path, 3)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    lines = [
        {"input": paths[0].name, "messages": [{"role": "user", "text": "Caption it."}]},
        {
            "input": paths[1].name,
            "max_tokens": 3,
            "messages": [
                {"role": "system", "text": "Be brief."},
                {"role": "user", "text": "What is it?"},
                {"role": "assistant", "text": "A mug."},
                {"role": "user", "text": "What colour?"},
            ],
        },
        {"input": paths[2].name, "schema": schema, "messages": [{"role": "user", "text": "n?"}]},
    ]
    manifest = tmp_path / "chat.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    engine = FakeEngine()
    res = make_resources(session_factory, blobs, engine, gpu_batch_size=8)
    request = SubmitRequest.of("chat", [str(manifest)], "fake", batch_size=8)
    result = run_job_locally(request, res, max_prompt_chars=1000)
    assert sorted(engine.calls) == [1, 1, 1]  # three settings, three model batches
    plain, turns, structured = _rows(session_factory, result.job_id)
    assert plain.status == "succeeded" and plain.result_text.endswith("image: Caption it.")
    assert turns.result_text == "caption of 64x48"  # cut to its own max_tokens
    assert turns.finish_reason == "length" and plain.finish_reason == "stop"
    assert structured.result_json == {"n": 0} and structured.completion_tokens
    assert all(r.prompt_tokens for r in (plain, turns, structured))

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"input": paths[0].name, "messages": [{"role": "assistant", "text": "hi"}]})
        + "\n"
    )
    with pytest.raises(RequestError) as refused:
        run_job_locally(SubmitRequest.of("chat", [str(bad)], "fake"), res, max_prompt_chars=1000)
    assert refused.value.code == "manifest_invalid" and "user turn" in refused.value.message
