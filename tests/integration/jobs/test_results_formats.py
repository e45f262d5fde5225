"""Results formats on SQLite and PostgreSQL, through the real pipeline (fake engine): the OpenAI
Batch output format (every line parsed with the ``openai`` package's own types), usage in every
format and in the status totals, the ``--status`` filter, streaming, and job metadata."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import BatchRequestCounts, CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject
from sqlalchemy import event, select

from jobs.cli.views import ResultFormat, write_results
from jobs.control import cancel_job
from jobs.db import Item, Job, SessionFactory
from jobs.errors import RequestError
from jobs.metadata import check_metadata, parse_meta
from jobs.queries import find_job, iter_results, list_recent_jobs, read_progress
from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import Blobs
from tests.helpers import make_resources, submit_captions, write_images
from workers.local import run_job_locally

ODD_IDS = ["sku/ü 1", 'quote " and \\ back', "  spaced  ", "emoji 🧾"]


def _caption_job(sf: SessionFactory, blobs: Blobs, tmp_path: Path, **fields: Any) -> str:
    """Four images with odd custom ids and one corrupt input (it fails), captioned."""
    paths = write_images(tmp_path / "imgs", len(ODD_IDS))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    lines = [{"input": f"imgs/{p.name}", "id": i} for p, i in zip(paths, ODD_IDS, strict=True)]
    lines.append({"input": "imgs/broken.png", "id": "broken-1"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    request = SubmitRequest.of(
        "caption", [str(manifest)], "llava-hf/llava-1.5-7b-hf", batch_size=8, **fields
    )
    res = make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8)
    return run_job_locally(request, res, max_prompt_chars=1000).job_id


# The formats written to one stream; ``txt`` writes a folder (tests/integration/cli/
# test_cli_sidecars.py).
STREAMED = [fmt for fmt in ResultFormat if fmt is not ResultFormat.txt]


def _export(sf: SessionFactory, job_id: str, fmt: ResultFormat, out: Path, **kw: Any) -> None:
    with sf() as session:
        write_results(session, job_id, fmt, str(out), **kw)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_envelope(line: dict[str, Any]) -> None:
    """The Batch output line's own shape (the openai package has no type for it)."""
    assert set(line) == {"id", "custom_id", "response", "error"}, line
    assert isinstance(line["id"], str) and line["id"]
    if line["error"] is None:  # answered: a completion, or an error object (a failed request)
        response = line["response"]
        assert set(response) == {"status_code", "request_id", "body"}
        assert isinstance(response["request_id"], str)
        if response["status_code"] != 200:
            assert response["status_code"] >= 400 and set(response["body"]) == {"error"}
            ErrorObject.model_validate(response["body"]["error"])
    else:  # never run: cancelled or expired, as OpenAI writes them
        assert line["response"] is None
        assert set(line["error"]) == {"code", "message"}
        assert line["error"]["code"] in ("batch_cancelled", "batch_expired")
        assert isinstance(line["error"]["message"], str)


def test_openai_format_parses_with_the_openai_types_and_round_trips_custom_ids(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _caption_job(session_factory, blobs, tmp_path)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    _export(session_factory, job_id, ResultFormat.openai, out, errors=str(errors))

    good, bad = _lines(out), _lines(errors)
    assert [line["custom_id"] for line in good] == ODD_IDS  # exactly, in submission order
    with session_factory() as session:
        items = {i.custom_id: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}
    for line in good:
        _check_envelope(line)
        completion = ChatCompletion.model_validate(line["response"]["body"])
        item = items[line["custom_id"]]
        assert completion.object == "chat.completion"
        assert completion.model == "llava-hf/llava-1.5-7b-hf"  # the job's model
        (choice,) = completion.choices
        assert choice.message.role == "assistant" and choice.message.content == item.result_text
        assert choice.finish_reason == item.finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == item.prompt_tokens > 0
        assert completion.usage.completion_tokens == item.completion_tokens > 0
        assert completion.usage.total_tokens == item.prompt_tokens + item.completion_tokens
        assert line["response"]["request_id"] == item.id
    (failed,) = bad
    _check_envelope(failed)
    assert failed["custom_id"] == "broken-1"
    error = failed["response"]["body"]["error"]
    assert error["code"] == items["broken-1"].error_code
    assert error["message"] == items["broken-1"].error_message

    # Without --errors, nothing is dropped: the failures follow in the same stream.
    both = tmp_path / "both.jsonl"
    _export(session_factory, job_id, ResultFormat.openai, both)
    lines = _lines(both)
    assert sorted(line["custom_id"] for line in lines) == sorted([*ODD_IDS, "broken-1"])
    assert [line["response"]["status_code"] for line in lines].count(400) == 1


def test_openai_content_of_json_results_is_the_json_text(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 2)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    lines = [
        {"input": paths[0].name, "schema": schema, "messages": [{"role": "user", "text": "n?"}]},
        {"input": paths[1].name, "max_tokens": 2, "messages": [{"role": "user", "text": "Hi"}]},
    ]
    manifest = tmp_path / "chat.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    chat = SubmitRequest.of("chat", [str(manifest)], "m", batch_size=8)
    chat_id = run_job_locally(chat, res, max_prompt_chars=1000).job_id
    ask = SubmitRequest.of("ask", [str(paths[0])], "m", questions=["Brand?", "Colour?"])
    ask_id = run_job_locally(ask, res, max_prompt_chars=1000).job_id

    out = tmp_path / "chat.out.jsonl"
    _export(session_factory, chat_id, ResultFormat.openai, out)
    structured, cut = (ChatCompletion.model_validate(x["response"]["body"]) for x in _lines(out))
    assert json.loads(structured.choices[0].message.content or "") == {"n": 0}
    assert cut.choices[0].finish_reason == "length"  # it reached its own max_tokens

    out = tmp_path / "ask.out.jsonl"
    _export(session_factory, ask_id, ResultFormat.openai, out)
    (line,) = _lines(out)
    answers = json.loads(
        ChatCompletion.model_validate(line["response"]["body"]).choices[0].message.content or ""
    )
    assert [a["question"] for a in answers] == ["Brand?", "Colour?"]
    assert all(a["answer"] for a in answers)


def test_cancelled_items_go_to_the_error_file_and_unfinished_ones_are_left_out(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id, _ = submit_captions(session_factory, blobs, tmp_path, n=3)
    out = tmp_path / "queued.jsonl"
    _export(session_factory, job_id, ResultFormat.openai, out)
    assert out.read_text() == ""  # nothing finished yet
    cancel_job(session_factory, job_id)
    errors = tmp_path / "errors.jsonl"
    _export(session_factory, job_id, ResultFormat.openai, out, errors=str(errors))
    assert out.read_text() == ""
    lines = _lines(errors)
    assert len(lines) == 3
    for line in lines:
        _check_envelope(line)
        assert line["error"]["code"] == "batch_cancelled" and line["custom_id"]


def test_usage_is_in_every_format_and_in_the_status_totals(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _caption_job(session_factory, blobs, tmp_path)
    with session_factory() as session:
        rows = list(iter_results(session, job_id))
        progress = read_progress(session, find_job(session, job_id))
    ok = [r for r in rows if r["status"] == "succeeded"]
    for row in ok:
        assert row["finish_reason"] == "stop"
        CompletionUsage.model_validate(row["usage"])
        assert row["usage"]["total_tokens"] > row["usage"]["prompt_tokens"] > 0
    (broken,) = [r for r in rows if r["status"] == "failed"]
    assert broken["finish_reason"] is None and broken["usage"] is None  # never reached the model

    shown = progress.as_dict()
    usage = CompletionUsage.model_validate(shown["usage"])
    assert usage.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in ok)
    assert usage.completion_tokens == sum(r["usage"]["completion_tokens"] for r in ok)
    counts = BatchRequestCounts.model_validate(shown["request_counts"])
    assert (counts.total, counts.completed, counts.failed) == (5, 4, 1)

    out = tmp_path / "r.csv"
    _export(session_factory, job_id, ResultFormat.csv, out)
    with out.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[-8:] == [
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "decision",  # the review's (nobody reviewed this job: empty)
        "edited",
        "reviewer",
        "reviewed_at",
    ]
    assert {r["decision"] for r in table} == {""}
    assert [r["custom_id"] for r in table] == [*ODD_IDS, "broken-1"]
    assert sum(int(r["total_tokens"] or 0) for r in table) == usage.total_tokens


def test_ask_csv_puts_the_item_usage_on_its_first_row(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 2)
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=8)
    request = SubmitRequest.of("ask", [str(tmp_path / "c")], "m", questions=["A?", "B?"])
    job_id = run_job_locally(request, res, max_prompt_chars=1000).job_id
    out = tmp_path / "ask.csv"
    _export(session_factory, job_id, ResultFormat.csv, out)
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert [r["question_index"] for r in table] == ["0", "1", "0", "1"]
    assert all(int(r["total_tokens"]) > 0 for r in table[::2])
    assert all(r["total_tokens"] == "" for r in table[1::2])  # a column sum is the job's
    with session_factory() as session:
        total = read_progress(session, find_job(session, job_id)).usage
    assert total is not None
    assert sum(int(r["total_tokens"] or 0) for r in table) == total.total_tokens


def test_status_filter_keeps_only_the_states_asked_for(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    job_id = _caption_job(session_factory, blobs, tmp_path)
    for fmt in STREAMED:
        out = tmp_path / f"failed.{fmt}"
        _export(session_factory, job_id, fmt, out, statuses=["failed"])
        text = out.read_text(encoding="utf-8")
        assert "broken-1" in text and not any(i in text for i in ("sku/ü 1", "emoji 🧾"))
    with session_factory() as session:
        kept = list(iter_results(session, job_id, statuses=["succeeded", "cancelled"]))
    assert [r["custom_id"] for r in kept] == ODD_IDS


def test_exports_stream_in_bounded_chunks(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """A big job is read ``chunk`` rows per query, as plain rows: the session holds no item,
    whatever the job's size."""
    job_id, _ = submit_captions(session_factory, blobs, tmp_path, n=2)
    n, chunk = 1203, 50
    with session_factory.begin() as session:
        template = session.scalars(select(Item).where(Item.job_id == job_id)).first()
        assert template is not None
        session.add_all(
            Item(
                id=f"bulk-{seq:05d}",
                job_id=job_id,
                seq=seq,
                custom_id=f"c{seq}",
                source=template.source,
                input_uri=template.input_uri,
                status="succeeded",
                attempts=1,
                result_text=f"caption {seq}",
                prompt_tokens=3,
                completion_tokens=2,
                finish_reason="stop",
            )
            for seq in range(2, n)
        )
    pages = -(-n // chunk) + 1  # one query per chunk, and one probe that nothing follows
    for fmt in STREAMED:
        out = tmp_path / f"all.{fmt}"
        held, selects = _watch_export(session_factory, job_id, fmt, out, chunk)
        assert held == [], (fmt, len(held))
        assert len(selects) == pages
        text = out.read_text(encoding="utf-8")
        assert "caption 1202" in text and f"c{n - 1}" in text
    # txt pages through twice: the sources alone (the root of the names), then the items.
    folder = tmp_path / "sidecars"
    held, selects = _watch_export(session_factory, job_id, ResultFormat.txt, folder, chunk)
    assert held == [] and len(selects) == 2 * pages
    assert not any("result_text" in q for q in selects[:pages])
    assert all("result_text" in q for q in selects[pages:-1])
    (written,) = {p.parent for p in folder.rglob("*.txt")}
    assert len(list(written.iterdir())) == n - 2  # the two items not finished write nothing
    # Every bulk item has one source: each after the first is named by its seq.
    (last,) = written.glob(f"*~{n - 1}.txt")
    assert last.read_text(encoding="utf-8") == f"caption {n - 1}"


def _watch_export(
    sf: SessionFactory, job_id: str, fmt: ResultFormat, out: Path, chunk: int
) -> tuple[list[int], list[str]]:
    """Exports, recording the items the session holds at each load, and the item queries."""
    held: list[int] = []
    selects: list[str] = []
    with sf() as session:

        @event.listens_for(session, "loaded_as_persistent")
        def _loaded(_session: Any, instance: Any) -> None:
            if isinstance(instance, Item):
                held.append(sum(isinstance(o, Item) for o in session.identity_map.values()))

        def _query(*args: Any) -> None:
            if "FROM items" in args[2]:
                selects.append(args[2])

        event.listen(session.get_bind(), "before_cursor_execute", _query)
        try:
            write_results(session, job_id, fmt, str(out), chunk=chunk)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", _query)
    return held, selects


def test_metadata_is_stored_shown_and_matched(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    odd = {"team": "search", 'we"ird.key $[0]': "välue = 1", "empty": ""}
    first, _ = submit_captions(
        session_factory, blobs, tmp_path / "a", n=1, metadata=odd, name="nov"
    )
    second, _ = submit_captions(
        session_factory, blobs, tmp_path / "b", n=1, metadata={"team": "ads"}, name="nov"
    )
    third, _ = submit_captions(session_factory, blobs, tmp_path / "c", n=1)
    with session_factory() as session:
        assert session.get(Job, first).job_metadata == odd  # type: ignore[union-attr]
        assert session.get(Job, third).job_metadata is None  # type: ignore[union-attr]
        shown = read_progress(session, find_job(session, first)).as_dict()
        assert shown["metadata"] == odd

        def ids(**kw: Any) -> list[str]:
            return [p.id for p in list_recent_jobs(session, **kw)]

        assert set(ids()) == {first, second, third}
        assert ids(metadata={"team": "search"}) == [first]
        assert ids(metadata={'we"ird.key $[0]': "välue = 1", "empty": ""}) == [first]
        assert ids(metadata={"team": "search", "empty": "x"}) == []  # all must match
        assert ids(metadata={"team": "sea"}) == []
        assert set(ids(name="nov")) == {first, second}
        assert ids(name="nov", metadata={"team": "ads"}) == [second]
        assert ids(name="other") == []


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        (["novalue"], "KEY=VALUE"),
        (["=v"], "empty"),
        (["a=1", "a=2"], "twice"),
        ([f"k{i}=v" for i in range(17)], "17 pairs"),
        (["k" * 65 + "=v"], "65 characters"),
        (["k=" + "v" * 513], "513 characters"),
        (["k=\udce9"], "UTF-8"),
    ],
)
def test_metadata_over_the_bounds_is_refused(pairs: list[str], words: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_meta(pairs)
    assert refused.value.code == "invalid_metadata" and words in refused.value.message


def test_metadata_within_the_bounds_is_accepted() -> None:
    pairs = [f"k{i}=" + "v" * 512 for i in range(15)] + ["k" * 64 + "=a=b"]
    parsed = parse_meta(pairs)
    assert parsed is not None and len(parsed) == 16 and parsed["k" * 64] == "a=b"
    check_metadata(parsed)
    assert parse_meta([]) is None


def test_a_request_with_bad_metadata_is_refused_before_anything_is_written(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    with pytest.raises(RequestError) as refused:
        submit_captions(session_factory, blobs, tmp_path, n=1, metadata={"k": "v" * 600})
    assert refused.value.code == "invalid_metadata"
    with session_factory() as session:
        assert session.scalars(select(Job.id)).all() == []
