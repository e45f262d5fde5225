"""The OpenAI Batch output as OpenAI writes it, on SQLite and PostgreSQL, through the real
pipeline (fake engine), every line parsed with the ``openai`` package's own types: a failed
request is a response with a 4xx/5xx status and ``body.error``; a cancelled or expired one is the
top-level ``error`` (``batch_cancelled``, ``batch_expired``); ``custom_id`` is never null; input
order; the body fields a reader indexes; and the batch object of ``status --format openai``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from openai.types import Batch, CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject
from sqlalchemy import select

from jobs.cli.views import ResultFormat, write_results
from jobs.control import cancel_job
from jobs.db import Item, Job, SessionFactory
from jobs.lifecycle.expiry import expire_windows
from jobs.openai_batch import batch_object
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import make_resources, submit_captions, write_images
from workers.local import run_job_locally

MODEL = "llava-hf/llava-1.5-7b-hf"


def _manifest_job(
    sf: SessionFactory, blobs: Blobs, tmp_path: Path, ids: list[str], **kw: Any
) -> str:
    """A caption job of one image per id; an id starting with ``broken`` gets a corrupt one."""
    folder = tmp_path / "imgs"
    paths = iter(write_images(folder, len(ids)))
    lines = []
    for custom_id in ids:
        path = next(paths)
        if custom_id.startswith("broken"):
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        lines.append({"input": f"imgs/{path.name}", "id": custom_id})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    request = SubmitRequest.of("caption", [str(manifest)], MODEL, batch_size=8)
    res = make_resources(sf, blobs, FakeEngine(**kw), gpu_batch_size=8)
    return run_job_locally(request, res, max_prompt_chars=1000).job_id


def _export(sf: SessionFactory, job_id: str, out: Path, **kw: Any) -> list[dict[str, Any]]:
    with sf() as session:
        write_results(session, job_id, ResultFormat.openai, str(out), **kw)
    return _lines(out)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _error_body(line: dict[str, Any], status_code: int, item: Item) -> ErrorObject:
    """A failed request as OpenAI writes one: a response, its body an error; no batch error."""
    assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    assert response["status_code"] == status_code and response["request_id"] == item.id
    assert set(response["body"]) == {"error"}
    assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
    return ErrorObject.model_validate(response["body"]["error"])


def test_a_failed_request_is_a_response_with_an_error_body(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _manifest_job(session_factory, blobs, tmp_path / "a", ["ok-1", "broken-2"])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    (good,) = _export(session_factory, job_id, out, errors=str(errors))
    (bad,) = _lines(errors)
    _, broken = _items(session_factory, job_id)
    assert good["custom_id"] == "ok-1" and bad["custom_id"] == "broken-2"
    assert bad["id"] == f"batch_req_{broken.id}"
    error = _error_body(bad, 400, broken)  # a bad input: the request's fault
    assert error.message == broken.error_message and error.code == broken.error_code
    assert error.code in ("image_decode_error", "unsupported_format")
    assert error.type == "invalid_request_error" and error.param is None

    # The model failing is the server's fault: 500.
    oom = _manifest_job(session_factory, blobs, tmp_path / "b", ["big"], oom_when_batch_over=0)
    (line,) = _export(session_factory, oom, tmp_path / "oom.jsonl")
    (item,) = _items(session_factory, oom)
    assert item.status == "failed" and item.error_code == "out_of_memory"
    error = _error_body(line, 500, item)
    assert error.code == "out_of_memory" and error.type == "server_error"
    assert error.message == item.error_message


def test_cancelled_requests_are_batch_cancelled_and_keep_a_custom_id(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A job from a folder has no custom ids: its lines carry the item id instead, never null."""
    job_id, _ = submit_captions(session_factory, blobs, tmp_path, n=3)
    cancel_job(session_factory, job_id)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    assert _export(session_factory, job_id, out, errors=str(errors)) == []
    items = _items(session_factory, job_id)
    assert [i.custom_id for i in items] == [None] * 3
    lines = _lines(errors)
    assert [line["custom_id"] for line in lines] == [i.id for i in items]  # in input order
    for line in lines:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled" and line["error"]["message"]
        assert set(line["error"]) == {"code", "message"}

    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    request = SubmitRequest.of("caption", [str(tmp_path / "c")], MODEL, batch_size=8)
    ran = run_job_locally(request, res, max_prompt_chars=1000).job_id
    lines = _export(session_factory, ran, tmp_path / "ran.jsonl")
    assert [line["custom_id"] for line in lines] == [i.id for i in _items(session_factory, ran)]
    assert all(line["response"]["status_code"] == 200 for line in lines)


def test_expired_requests_are_batch_expired(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = submit_captions(
        session_factory, blobs, tmp_path, n=2, completion_window_seconds=3600
    )
    window_end = _job(session_factory, job_id).expires_at
    assert window_end is not None
    expire_windows(session_factory, now=window_end + timedelta(seconds=1))
    lines = _export(session_factory, job_id, tmp_path / "out.jsonl")
    assert len(lines) == 2
    for line in lines:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"


def test_output_keeps_input_order_with_the_fields_readers_index(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    ids = ["z-first", "broken-a", "m-third", "a-fourth", "broken-b"]
    job_id = _manifest_job(session_factory, blobs, tmp_path, ids)
    mixed = _export(session_factory, job_id, tmp_path / "mixed.jsonl")
    assert [line["custom_id"] for line in mixed] == ids  # interleaved, as submitted
    errors = tmp_path / "errors.jsonl"
    good = _export(session_factory, job_id, tmp_path / "good.jsonl", errors=str(errors))
    assert [line["custom_id"] for line in good] == ["z-first", "m-third", "a-fourth"]
    assert [line["custom_id"] for line in _lines(errors)] == ["broken-a", "broken-b"]

    fingerprints = set()
    for line in good:
        body = line["response"]["body"]
        for field in ("system_fingerprint", "service_tier"):
            assert field in body, field
        usage = body["usage"]
        assert {"prompt_tokens_details", "completion_tokens_details"} <= set(usage)
        completion = ChatCompletion.model_validate(body)
        assert completion.system_fingerprint and completion.system_fingerprint.startswith("fp_")
        fingerprints.add(completion.system_fingerprint)
        parsed = CompletionUsage.model_validate(usage)
        assert parsed.prompt_tokens_details is not None
        assert parsed.prompt_tokens_details.cached_tokens == 0
        assert parsed.completion_tokens_details is not None
        assert parsed.completion_tokens_details.reasoning_tokens == 0
        assert completion.choices[0].message.annotations == []
    assert len(fingerprints) == 1  # one model build, one fingerprint


def _job(sf: SessionFactory, job_id: str) -> Job:
    with sf() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _batch(sf: SessionFactory, job_id: str) -> tuple[Batch, dict[str, Any]]:
    with sf() as session:
        shown = batch_object(session, job_id)
    json.dumps(shown)  # as printed
    return Batch.model_validate(shown), shown


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def test_a_finished_job_is_a_batch_object(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _manifest_job(session_factory, blobs, tmp_path, ["a", "broken-b", "c"])
    batch, shown = _batch(session_factory, job_id)
    job = _job(session_factory, job_id)
    assert batch.id == job_id and batch.object == "batch" and batch.status == "completed"
    assert batch.endpoint == "/v1/chat/completions" and batch.model == MODEL
    assert batch.created_at == _ts(job.created_at)
    assert batch.in_progress_at == _ts(job.started_at) and batch.in_progress_at is not None
    assert batch.completed_at == _ts(job.finished_at) and batch.completed_at is not None
    assert batch.failed_at is None and batch.cancelled_at is None and batch.expired_at is None
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    assert batch.errors is None  # the failed request is in the error lines, as OpenAI has it
    assert batch.completion_window == "none" and batch.expires_at is None
    assert batch.metadata is None
    assert batch.usage is not None and batch.usage.total_tokens > batch.usage.input_tokens > 0
    assert batch.usage.input_tokens_details.cached_tokens == 0
    for field in ("output_file_id", "error_file_id", "errors", "cancelling_at"):
        assert field in shown  # present, null: a reader may index them


def test_the_batch_status_follows_the_job(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = submit_captions(
        session_factory,
        blobs,
        tmp_path / "w",
        n=2,
        completion_window_seconds=7200,
        metadata={"team": "search"},
    )
    batch, _ = _batch(session_factory, job_id)
    job = _job(session_factory, job_id)
    assert batch.status == "in_progress" and batch.in_progress_at is None  # nothing started yet
    assert batch.completion_window == "2h" and batch.expires_at == _ts(job.expires_at)
    assert batch.metadata == {"team": "search"}
    assert job.expires_at is not None
    expire_windows(session_factory, now=job.expires_at + timedelta(seconds=1))
    batch, _ = _batch(session_factory, job_id)
    assert batch.status == "expired" and batch.expired_at == _ts(
        _job(session_factory, job_id).finished_at
    )

    cancelled, _ = submit_captions(session_factory, blobs, tmp_path / "c", n=2)
    cancel_job(session_factory, cancelled)
    batch, _ = _batch(session_factory, cancelled)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None and batch.request_counts.total == 2

    failed = _manifest_job(session_factory, blobs, tmp_path / "f", ["broken-1", "broken-2"])
    batch, _ = _batch(session_factory, failed)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.object == "list"
    (error,) = batch.errors.data or []
    code = _items(session_factory, failed)[0].error_code
    assert error.code == code and error.message and "2 request(s)" in error.message
