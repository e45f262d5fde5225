"""OpenAI-Batch JSONL in, through the real pipeline (fake engine), on SQLite and PostgreSQL: a
realistic file (captions, a conversation, a json_schema extraction, a data: URI, a relative
path, an s3:// object, URLs that are never fetched), refusals that write nothing, and
``custom_id`` in our own manifest format."""

from __future__ import annotations

import base64
import json
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.dispatch import CallbackPublisher
from jobs.errors import RequestError
from jobs.fleet import Serving, beat_worker, forget_dead_workers
from jobs.states import ItemStatus
from jobs.submit.job import submit_job
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.request import SubmitRequest, SubmitResult
from model.fake import FakeEngine
from storage import Blobs, LocalStore
from tests.helpers import image_bytes, make_resources, write_images
from workers.local import run_job_locally

MODEL = "llava-hf/llava-1.5-7b-hf"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture(autouse=True)
def _a_worker_served_the_files_model(session_factory: SessionFactory) -> None:
    """The deployment serves MODEL: a worker for it beat two days ago (no longer live), beside
    the configured model (``_request``'s)."""
    two_days_ago = utcnow() - timedelta(days=2)
    beat_worker(session_factory, "gpu-1@host", Serving(MODEL, None, "none"), now=two_days_ago)


def _image(url: str, text: str = "Describe the product in one sentence.") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def _line(custom_id: str, messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": messages, **body},
    }


def _write(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


def _data_uri(size: tuple[int, int] = (40, 30)) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(size, seed=9)).decode()


def _request(file: str, fmt: BatchFormat | None = BatchFormat.auto, **kw: Any) -> SubmitRequest:
    return SubmitRequest.of("chat", [file], "the-worker-model", input_format=fmt, **kw)


def _submit(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> SubmitResult:
    return submit_job(
        request,
        session_factory=sf,
        blobs=blobs,
        publisher=CallbackPublisher(lambda _j, _i: None),
        max_prompt_chars=4000,
    )


def _stored_files(blobs: Blobs) -> list[Path]:
    assert isinstance(blobs.store, LocalStore)
    return [p for p in blobs.store.root.rglob("*") if p.is_file()]


def _refused(sf: SessionFactory, blobs: Blobs, request: SubmitRequest) -> RequestError:
    with pytest.raises(RequestError) as refused:
        _submit(sf, blobs, request)
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Item)) == 0
    assert _stored_files(blobs) == []
    return refused.value


def _record_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host names this process looks up from now on, in order."""
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kw: Any) -> Any:
        looked_up.append(str(host))
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return looked_up


def _items(sf: SessionFactory, job_id: str) -> list[Item]:
    with sf() as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def test_a_realistic_batch_file_runs_and_urls_fail_alone_without_being_fetched(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    s3_bucket: str,
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "batch"
    write_images(folder / "photos", 2)
    s3_client.put_object(Bucket=s3_bucket, Key="cat/c.png", Body=image_bytes((20, 20), seed=3))
    lines = [
        _line("caption-1", [_image("photos/img000.png")], max_tokens=8),
        _line(
            "chat-2",
            [
                {"role": "system", "content": "Answer in one short sentence."},
                _image("photos/img001.png", "What is it?"),
                {"role": "assistant", "content": "A mug."},
                {"role": "user", "content": "What colour is it?"},
            ],
            max_completion_tokens=5,
            temperature=0,
        ),
        _line(
            "extract-3",
            [_image(_data_uri(), "How many items?")],
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}},
        ),
        _line("s3-4", [_image(f"s3://{s3_bucket}/cat/c.png")]),
        "",
        _line("web-5", [_image("https://example.com/d.png")]),
        _line("file-6", [_image("file:///etc/hostname")]),
    ]
    batch = _write(folder / "requests.jsonl", lines)
    looked_up = _record_lookups(monkeypatch)

    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    result = run_job_locally(_request(batch), res, max_prompt_chars=4000)

    assert not [host for host in looked_up if "example.com" in host]
    with session_factory() as session:
        job = session.get(Job, result.job_id)
        assert job is not None and job.model == MODEL and job.kind == "chat"
        assert job.status == "completed"
    items = _items(session_factory, result.job_id)
    assert [i.custom_id for i in items] == [
        "caption-1",
        "chat-2",
        "extract-3",
        "s3-4",
        "web-5",
        "file-6",
    ]
    caption, chat, extract, s3_item, web, local_url = items
    for item in (caption, chat, extract, s3_item):
        assert item.status == "succeeded", (item.custom_id, item.error_message)
    assert caption.source == "photos/img000.png" and caption.input_sha256
    assert caption.result_text.startswith("caption of 32x32 image: Describe the")  # 8 tokens
    assert [m["role"] for m in chat.request["messages"]] == ["system", "user", "assistant", "user"]
    assert chat.request["max_tokens"] == 5 and chat.finish_reason == "length"
    assert extract.source.startswith("data:image/png;base64,") and extract.input_sha256
    assert extract.result_json == {"n": 0} and extract.request["schema"] == SCHEMA
    assert s3_item.input_uri == f"s3://{s3_bucket}/cat/c.png" and s3_item.input_sha256 is None
    for item, url in ((web, "https://example.com/d.png"), (local_url, "file:///etc/hostname")):
        assert item.status == "failed" and item.error_code == "input_scheme_not_allowed"
        assert "never fetched" in item.error_message and item.source == url
    # Two stored inputs (the relative paths) and the data: image, content-addressed.
    assert len(_stored_files(blobs)) == 3


@pytest.mark.parametrize(
    ("lines", "code", "where"),
    [
        (
            [_line("a", [_image(_data_uri())]), _line("b", [_image("x.png")]), "{oops"],
            "manifest_invalid",
            "line 3",
        ),
        (
            [_line("a", [_image(_data_uri())]), _line("b", [_image("x.png")], n=2)],
            "unsupported_parameter",
            "line 2",
        ),
        (
            [
                _line("a", [_image(_data_uri())]),
                {
                    **_line("b", []),
                    "body": {"model": "other", "messages": [_image("x.png")]},
                },
            ],
            "model_mismatch",
            "line 2",
        ),
        (
            [_line("a", [_image(_data_uri())]), _line("a", [_image("x.png")])],
            "duplicate_id",
            "line 2",
        ),
        (
            [_line("a", [_image(_data_uri())]), _line("b", [_image("../outside.png")])],
            "manifest_escape",
            "line 2",
        ),
        (
            [_line("a", [_image(_data_uri())]), _line("b", [_image("missing.png")])],
            "source_not_found",
            "line 2",
        ),
        (
            [_line("a", [_image("x.png")], max_tokens=100_000)],
            "invalid_option",
            "line 1",
        ),
    ],
    ids=[
        "malformed",
        "n",
        "two-models",
        "duplicate",
        "escape",
        "missing",
        "max-tokens",
    ],
)
def test_one_bad_line_refuses_the_file_and_writes_nothing(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    lines: list[Any],
    code: str,
    where: str,
) -> None:
    folder = tmp_path / "batch"
    write_images(folder, 1, prefix="x")
    (folder / "x000.png").rename(folder / "x.png")
    (tmp_path / "outside.png").write_bytes(image_bytes((8, 8), seed=1))
    refused = _refused(session_factory, blobs, _request(_write(folder / "b.jsonl", lines)))
    assert refused.code == code, refused.message
    assert f"b.jsonl, {where}" in refused.message, refused.message


def test_the_format_can_be_named_and_an_openai_line_is_not_a_manifest_line(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path, 1)
    openai = _write(tmp_path / "o.jsonl", [_line("a", [_image("img000.png")])])
    ours = _write(
        tmp_path / "m.jsonl",
        [{"input": "img000.png", "custom_id": "m-1", "messages": [{"role": "user", "text": "Hi"}]}],
    )
    refused = _refused(session_factory, blobs, _request(openai, BatchFormat.manifest))
    assert refused.code == "manifest_invalid" and "submit batch" in refused.message
    caption = SubmitRequest.of("caption", [openai], "m")
    assert "submit batch" in _refused(session_factory, blobs, caption).message
    assert _refused(session_factory, blobs, _request(ours, BatchFormat.openai)).code == (
        "manifest_invalid"
    )

    # Our own format in submit batch: a chat manifest; the job keeps the request's model.
    result = _submit(session_factory, blobs, _request(ours))
    (item,) = _items(session_factory, result.job_id)
    assert item.custom_id == "m-1" and item.request == {
        "messages": [{"role": "user", "text": "Hi"}]
    }
    with session_factory() as session:
        job = session.get(Job, result.job_id)
        assert job is not None and job.model == "the-worker-model"

    # The same file with the same key is the same job; data: images are judged by content.
    keyed = _write(tmp_path / "k.jsonl", [_line("k", [_image(_data_uri())])])
    first = _submit(session_factory, blobs, _request(keyed, idempotency_key="k"))
    again = _submit(session_factory, blobs, _request(keyed, idempotency_key="k"))
    assert again.existing and again.job_id == first.job_id
    _write(tmp_path / "k.jsonl", [_line("k", [_image(_data_uri((41, 30)))])])
    with pytest.raises(RequestError) as conflict:
        _submit(session_factory, blobs, _request(keyed, idempotency_key="k"))
    assert conflict.value.code == "idempotency_conflict"


def test_custom_id_is_an_alias_of_id_in_a_manifest(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Issue 12: a manifest line with ``custom_id`` was silently stored with a null id."""
    write_images(tmp_path, 2)
    manifest = _write(
        tmp_path / "m.jsonl",
        [{"input": "img000.png", "custom_id": "sku-1"}, {"input": "img001.png", "id": "sku-2"}],
    )
    result = _submit(session_factory, blobs, SubmitRequest.of("caption", [manifest], "m"))
    assert [i.custom_id for i in _items(session_factory, result.job_id)] == ["sku-1", "sku-2"]

    both = _write(tmp_path / "both.jsonl", [{"input": "img000.png", "id": "a", "custom_id": "b"}])
    with pytest.raises(RequestError) as conflicting:
        _submit(session_factory, blobs, SubmitRequest.of("caption", [both], "m"))
    assert conflicting.value.code == "manifest_invalid"


def test_an_empty_or_oversized_inline_image_fails_only_its_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Invariant I6 (docs/design.md#I6): a data: image that is empty or over the byte limit is
    a bad input, not a bad file; its item is written failed, and the other lines run."""
    big = _data_uri((400, 300))
    file = _write(
        tmp_path / "batch.jsonl",
        [
            _line("ok", [_image(_data_uri())]),
            _line("empty", [_image("data:image/png;base64,")]),
            _line("big", [_image(big)]),
        ],
    )
    limit = len(base64.b64decode(big.split(",", 1)[1])) - 1
    result = _submit(session_factory, blobs, _request(file, max_input_bytes=limit))
    with session_factory() as session:
        items = {
            item.custom_id: item
            for item in session.scalars(select(Item).where(Item.job_id == result.job_id))
        }
    assert items["ok"].status == ItemStatus.queued
    assert (items["empty"].status, items["empty"].error_code) == ("failed", "empty_input")
    assert (items["big"].status, items["big"].error_code) == ("failed", "input_too_large")


@pytest.mark.parametrize("named", ["gpt-4o-mini", "acme/forgotten", "llava-hf/llava-1.5-13b-hf"])
def test_a_model_no_worker_serves_is_refused_naming_the_served_ones(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    named: str,
) -> None:
    """A file naming a model this deployment does not serve (not LLAVA_BATCH_MODEL, no worker of
    the registry, which forgets a worker gone a week) is refused, naming those it serves; a
    hosted name is compared, never looked up."""
    eight_days_ago = utcnow() - timedelta(days=8)
    forgotten = Serving("acme/forgotten", None, "none")
    beat_worker(session_factory, "old@host", forgotten, now=eight_days_ago)
    assert forget_dead_workers(session_factory) == 1  # the sweeper's pass: a week by default
    write_images(tmp_path, 1)
    lines = [_line("a", [_image("img000.png")]), _line("b", [_image(_data_uri())])]
    for line in lines:
        line["body"]["model"] = named
    batch = _write(tmp_path / "b.jsonl", lines)
    looked_up = _record_lookups(monkeypatch)
    refused = _refused(session_factory, blobs, _request(batch))
    assert refused.code == "model_not_served"
    assert named in refused.message
    # Sorted: "llava-hf/…" before "the-worker-model".
    assert f"served: {MODEL}, the-worker-model" in refused.message, refused.message
    assert "--model the-worker-model" in refused.message
    assert not [host for host in looked_up if "hugging" in host or "hf.co" in host]

    # Served by a worker of the registry, or configured: accepted, and the job is for it.
    for served in (MODEL, "the-worker-model"):
        for line in lines:
            line["body"]["model"] = served
        result = _submit(session_factory, blobs, _request(_write(tmp_path / "b.jsonl", lines)))
        with session_factory() as session:
            job = session.get(Job, result.job_id)
            assert job is not None and job.model == served
    # --model overrides the file's name: nothing to refuse.
    for line in lines:
        line["body"]["model"] = named
    chosen = _request(_write(tmp_path / "b.jsonl", lines), model_chosen=True)
    assert _submit(session_factory, blobs, chosen).model == "the-worker-model"
