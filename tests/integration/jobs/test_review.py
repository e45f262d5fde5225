"""The review layer (issue 23), on SQLite and PostgreSQL: pages of a job's items by keyset in
both directions under every filter, their counts, bulk decisions over exactly the filtered
view, edits kept beside the model's result (an extract's checked against its schema), and
reviews that go with their job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from jobs.cli.views import ResultFormat, write_results
from jobs.db import Item, ItemInput, ItemPage, Job, Review, SessionFactory, utcnow
from jobs.errors import ItemNotFoundError, JobNotFoundError, RequestError
from jobs.hooks import pause_at
from jobs.lifecycle import delete_step, mark_deleting
from jobs.retention.blobs import queue_inputs_of
from jobs.review import (
    ItemFilter,
    ReviewRow,
    clear,
    decide,
    decide_filtered,
    decisions,
    edit,
    error_codes,
    item_detail,
    list_items,
)
from tests.interleaving import Interleaving

SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "vendor": {"type": "string"}},
    "required": ["total"],
    "additionalProperties": False,
}


def _job(sf: SessionFactory, items: list[dict[str, Any]], *, kind: str = "caption") -> str:
    """A finished job of these items (seq in list order), written directly."""
    now = utcnow()
    params: dict[str, Any] = {"batch_size": 8}
    if kind == "extract":
        params["schema"] = SCHEMA
    with sf.begin() as session:
        job = Job(kind=kind, status="completed", params=params, model="tiny-llava", prompt="Say.")
        session.add(job)
        session.flush()
        for seq, fields in enumerate(items):
            session.add(
                Item(
                    id=f"{job.id[:8]}-{seq:04d}",
                    job_id=job.id,
                    seq=seq,
                    source=fields.pop("source", f"imgs/photo-{seq:04d}.png"),
                    input_uri=f"file:///in/{seq}.png",
                    created_at=now,
                    finished_at=now,
                    **{"status": "succeeded", **fields},
                )
            )
        return job.id


def _mixed(n: int = 30) -> list[dict[str, Any]]:
    """Every third item failed (alternating codes), the rest captioned; one truncated."""
    items: list[dict[str, Any]] = []
    for seq in range(n):
        if seq % 3 == 2:
            code = "image_decode_error" if seq % 2 else "input_not_found"
            items.append({"status": "failed", "error_code": code, "error_message": "bad"})
        else:
            text = f"A red barn number {seq}" if seq % 2 else f"A blue 100%_sky {seq}"
            items.append({"result_text": text, "finish_reason": "stop", "custom_id": f"sku-{seq}"})
    items[0]["finish_reason"] = "length"
    return items


def _walk(sf: SessionFactory, job_id: str, flt: ItemFilter, limit: int) -> list[list[int]]:
    """Every page forward from the first, as seq lists."""
    pages, after = [], None
    while True:
        page = list_items(sf, job_id, flt, after=after, limit=limit)
        pages.append([r.seq for r in page.rows])
        if page.next_after is None:
            return pages
        after = page.next_after


FILTERS = [
    (ItemFilter(), lambda s: True),
    (ItemFilter(status="failed"), lambda s: s % 3 == 2),
    (ItemFilter(error_code="input_not_found"), lambda s: s % 3 == 2 and s % 2 == 0),
    (ItemFilter(text="RED barn"), lambda s: s % 3 != 2 and s % 2 == 1),
    (ItemFilter(status="succeeded", text="sku-1"), lambda s: s % 3 != 2 and str(s)[0] == "1"),
]


@pytest.mark.parametrize("index", range(len(FILTERS)))
def test_pages_walk_forward_and_back_over_exactly_the_filtered_items(
    session_factory: SessionFactory, index: int
) -> None:
    flt, matches = FILTERS[index]
    job_id = _job(session_factory, _mixed(30))
    expected = [s for s in range(30) if matches(s)]
    pages = _walk(session_factory, job_id, flt, limit=4)
    assert [s for page in pages for s in page] == expected
    assert all(len(p) == 4 for p in pages[:-1])
    first = list_items(session_factory, job_id, flt, limit=4)
    assert (first.shown, first.total, first.prev_before) == (len(expected), 30, None)
    # Back from the last page, each previous page is the one walked forward.
    last = list_items(session_factory, job_id, flt, after=None, limit=4)
    after = None
    while last.next_after is not None:
        after = last.next_after
        last = list_items(session_factory, job_id, flt, after=after, limit=4)
    back, page = [[r.seq for r in last.rows]], last
    while page.prev_before is not None:
        page = list_items(session_factory, job_id, flt, before=page.prev_before, limit=4)
        back.append([r.seq for r in page.rows])
    assert list(reversed(back)) == pages
    assert page.next_after == (pages[0][-1] if len(pages) > 1 else None)


def test_text_search_is_a_substring_not_a_pattern(session_factory: SessionFactory) -> None:
    job_id = _job(session_factory, _mixed(12))
    found = list_items(session_factory, job_id, ItemFilter(text="100%_SKY"))
    assert [r.seq for r in found.rows] == [0, 4, 6, 10]
    assert list_items(session_factory, job_id, ItemFilter(text="1_0%")).shown == 0
    by_input = list_items(session_factory, job_id, ItemFilter(text="photo-0011"))
    assert [r.seq for r in by_input.rows] == [11]


def test_rows_say_why_an_item_failed_and_mark_truncated_or_schema_invalid_output(
    session_factory: SessionFactory,
) -> None:
    job_id = _job(session_factory, _mixed(6))
    rows = list_items(session_factory, job_id, ItemFilter()).rows
    assert rows[0].truncated and not rows[1].truncated
    assert rows[5].error_words == "The image is corrupt or truncated."
    assert rows[2].error_words == "The input does not exist (any more)."
    assert rows[2].error_message == "bad" and rows[1].error_words is None
    assert (rows[1].input_name, rows[1].custom_id) == ("imgs/photo-0001.png", "sku-1")
    extract = _job(
        session_factory,
        [
            {"status": "failed", "error_code": "output_invalid", "result_text": "{}"},
            {"result_json": {"total": 3}},
        ],
        kind="extract",
    )
    marked = [r.schema_invalid for r in list_items(session_factory, extract, ItemFilter()).rows]
    assert marked == [True, False]


def test_error_codes_count_each_code(session_factory: SessionFactory) -> None:
    job_id = _job(session_factory, _mixed(30))
    assert error_codes(session_factory, job_id) == [
        ("image_decode_error", 5),
        ("input_not_found", 5),
    ]


def test_review_filter_and_bulk_decisions_touch_only_the_filtered_view(
    session_factory: SessionFactory,
) -> None:
    job_id = _job(session_factory, _mixed(30))
    other = _job(session_factory, _mixed(6))
    failed = ItemFilter(status="failed")
    assert decide_filtered(session_factory, job_id, failed, "rejected", "ann") == 10
    assert decide_filtered(session_factory, job_id, failed, "rejected", "ann") == 0  # unchanged
    red = ItemFilter(review="unreviewed", text="red")
    assert decide_filtered(session_factory, job_id, red, "approved", "bob") == 10

    def seqs(flt: ItemFilter, job: str = job_id) -> list[int]:
        return [s for page in _walk(session_factory, job, flt, limit=7) for s in page]

    assert seqs(ItemFilter(review="rejected")) == [s for s in range(30) if s % 3 == 2]
    approved = [s for s in range(30) if s % 3 != 2 and s % 2]
    assert seqs(ItemFilter(review="approved")) == approved
    unreviewed = [s for s in range(30) if s % 3 != 2 and not s % 2]
    assert seqs(ItemFilter(review="unreviewed")) == unreviewed
    # A review state alone is counted from the reviews (a page too small to hold them all).
    for state, expected in [("rejected", 10), ("approved", len(approved)), ("unreviewed", 10)]:
        counted = list_items(session_factory, job_id, ItemFilter(review=state), limit=4)
        assert (counted.shown, counted.total) == (expected, 30)
    page = list_items(session_factory, job_id, ItemFilter(review="approved", text="number 1"))
    assert page.shown == 4 and {r.reviewer for r in page.rows} == {"bob"}
    assert seqs(ItemFilter(review="unreviewed"), other) == list(range(6))  # another job: untouched


def test_decide_by_id_counts_changes_and_keeps_an_edit(session_factory: SessionFactory) -> None:
    job_id = _job(session_factory, _mixed(6))
    ids = [r.item_id for r in list_items(session_factory, job_id, ItemFilter()).rows]
    edit(session_factory, ids[0], "A barn, red.", "ann")
    assert decide(session_factory, ids[:3], "approved", "bob") == 2  # ids[0] was approved
    assert decide(session_factory, ids[:3], "rejected", "bob") == 3
    row = _row(session_factory, job_id, 0)
    assert (row.decision, row.edited_text, row.reviewer) == ("rejected", "A barn, red.", "bob")
    assert row.result_text == "A blue 100%_sky 0"  # the model's own, untouched
    assert row.reviewed_at is not None
    with pytest.raises(ItemNotFoundError) as missing:
        decide(session_factory, [ids[3], "no-such-item"], "approved", "bob")
    assert missing.value.code == "item_not_found" and isinstance(missing.value, RequestError)
    assert _row(session_factory, job_id, 3).decision is None  # all or nothing
    with pytest.raises(RequestError) as bad:
        decide(session_factory, ids, "maybe", "bob")
    assert bad.value.code == "review_decision_invalid"
    clear(session_factory, ids[0])
    row = _row(session_factory, job_id, 0)
    assert (row.decision, row.edited_text, row.result_text) == (None, None, "A blue 100%_sky 0")


def _row(sf: SessionFactory, job_id: str, seq: int) -> ReviewRow:
    rows = list_items(sf, job_id, ItemFilter(), after=seq - 1, limit=1).rows
    assert rows[0].seq == seq
    return rows[0]


def test_an_extract_edit_must_validate_against_the_jobs_schema(
    session_factory: SessionFactory,
) -> None:
    job_id = _job(
        session_factory, [{"result_json": {"total": 3, "vendor": "Acme"}}], kind="extract"
    )
    (row,) = list_items(session_factory, job_id, ItemFilter()).rows
    for bad, words in [
        ('{"total": "three"}', "total"),
        ('{"vendor": "Acme"}', "'total' is a required property"),
        ("{not json", "not valid JSON"),
    ]:
        with pytest.raises(RequestError) as refused:
            edit(session_factory, row.item_id, bad, "ann")
        assert refused.value.code == "review_edit_invalid" and words in refused.value.message
    assert _row(session_factory, job_id, 0).decision is None  # nothing kept
    edit(session_factory, row.item_id, '{"total": 4, "vendor": "Acme"}', "ann", decision=None)
    kept = _row(session_factory, job_id, 0)
    assert kept.edited_json == {"total": 4, "vendor": "Acme"} and kept.edited_text is None
    assert kept.result_json == {"total": 3, "vendor": "Acme"} and kept.decision is None
    edit(session_factory, row.item_id, '{"total": 5}', "bob")
    assert (
        _row(session_factory, job_id, 0).decision,
        _row(session_factory, job_id, 0).reviewer,
    ) == (
        "approved",
        "bob",
    )


def test_item_detail_has_what_the_item_page_shows(session_factory: SessionFactory) -> None:
    job_id = _job(
        session_factory,
        [{"result_json": {"total": 3}, "prompt_tokens": 40, "completion_tokens": 7, "attempts": 2}],
        kind="extract",
    )
    (row,) = list_items(session_factory, job_id, ItemFilter()).rows
    with session_factory.begin() as session:
        session.add(ItemPage(item_id=row.item_id, page_number=2, error_code="pdf_corrupt"))
        session.add(ItemPage(item_id=row.item_id, page_number=1, result_json={"total": 3}))
        session.add(ItemInput(item_id=row.item_id, position=1, uri="file:///in/more.png"))
    decide(session_factory, [row.item_id], "approved", "ann")
    detail = item_detail(session_factory, row.item_id)
    assert detail is not None
    assert (detail.job_id, detail.job_kind, detail.schema) == (job_id, "extract", SCHEMA)
    assert (detail.prompt, detail.prompt_tokens, detail.completion_tokens) == ("Say.", 40, 7)
    assert detail.attempts == 2 and detail.decision == "approved"
    assert detail.input_uris == ["file:///in/0.png", "file:///in/more.png"] and detail.inputs == 2
    assert [p.page_number for p in detail.pages] == [1, 2]
    assert detail.pages[1].error_words == "The PDF cannot be read."
    assert item_detail(session_factory, "no-such-item") is None


def test_unknown_jobs_items_and_filters_are_refused_with_their_codes(
    session_factory: SessionFactory,
) -> None:
    job_id = _job(session_factory, _mixed(3))
    for call in (
        lambda: list_items(session_factory, "no-such-job", ItemFilter()),
        lambda: error_codes(session_factory, "no-such-job"),
        lambda: decide_filtered(session_factory, "no-such-job", ItemFilter(), "approved", "a"),
    ):
        with pytest.raises(JobNotFoundError) as gone:
            call()
        assert gone.value.code == "job_not_found" and isinstance(gone.value, RequestError)
    for call in (
        lambda: edit(session_factory, "no-such-item", "x", "a"),
        lambda: clear(session_factory, "no-such-item"),
    ):
        with pytest.raises(ItemNotFoundError):
            call()
    for flt in (ItemFilter(status="done"), ItemFilter(review="maybe")):
        with pytest.raises(RequestError) as bad:
            list_items(session_factory, job_id, flt)
        assert bad.value.code == "invalid_filter"
    with pytest.raises(RequestError) as nobody:
        decide_filtered(session_factory, job_id, ItemFilter(), "approved", " ")
    assert nobody.value.code == "review_reviewer_invalid"


def test_reviews_are_deleted_with_their_job(session_factory: SessionFactory) -> None:
    job_id = _job(session_factory, _mixed(7))
    kept = _job(session_factory, _mixed(2))
    assert decide_filtered(session_factory, job_id, ItemFilter(), "approved", "ann") == 7
    assert decide_filtered(session_factory, kept, ItemFilter(), "approved", "ann") == 2
    mark_deleting(session_factory, [job_id])
    with pytest.raises(JobNotFoundError):  # gone for the pages from the deletion's start
        list_items(session_factory, job_id, ItemFilter())
    while (
        not (step := delete_step(session_factory, job_id, batch=3, queue_inputs=queue_inputs_of))
        or not step.job_gone
    ):
        assert step is not None
    with session_factory() as session:
        left = session.execute(select(Review.job_id, func.count()).group_by(Review.job_id)).all()
    assert [tuple(r) for r in left] == [(kept, 2)]


def test_a_text_edit_is_text_and_an_ask_edit_a_list(session_factory: SessionFactory) -> None:
    ask = _job(session_factory, [{"result_json": [{"question": "Q?", "answer": "A."}]}], kind="ask")
    (row,) = list_items(session_factory, ask, ItemFilter()).rows
    with pytest.raises(RequestError) as bad:
        edit(session_factory, row.item_id, json.dumps({"answer": "B."}), "ann")
    assert bad.value.code == "review_edit_invalid"
    edit(session_factory, row.item_id, json.dumps([{"question": "Q?", "answer": "B."}]), "ann")
    assert _row(session_factory, ask, 0).edited_json == [{"question": "Q?", "answer": "B."}]
    caption = _job(session_factory, _mixed(1))
    (row,) = list_items(session_factory, caption, ItemFilter()).rows
    edit(session_factory, row.item_id, '{"not": "json to a caption"}', "ann")
    assert _row(session_factory, caption, 0).edited_text == '{"not": "json to a caption"}'


def test_an_edited_failed_extraction_is_a_success_in_the_openai_export_with_edits(
    session_factory: SessionFactory, tmp_path: Path
) -> None:
    """The point of editing a schema-invalid output: the corrected JSON goes out as the answer
    (``results --format openai --use-edits``); without the option the failure goes out as it
    was."""
    job_id = _job(
        session_factory,
        [
            {"status": "failed", "error_code": "output_invalid", "result_text": '{"total": "x"}'},
            {"result_json": {"total": 3}, "result_text": '{"total": 3}'},
        ],
        kind="extract",
    )
    rows = list_items(session_factory, job_id, ItemFilter()).rows
    edit(session_factory, rows[0].item_id, '{"total": 7}', "ann")

    def export(**options: Any) -> list[dict[str, Any]]:
        out = tmp_path / "out.jsonl"
        with session_factory() as session:
            write_results(session, job_id, ResultFormat.openai, str(out), **options)
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    plain = export()
    assert plain[0]["response"]["status_code"] == 500  # output_invalid, as the model left it
    fixed = export(use_edits=True)
    assert fixed[0]["response"]["status_code"] == 200
    content = fixed[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert json.loads(content) == {"total": 7}
    assert fixed[1] == plain[1]  # not edited: unchanged
    only = export(use_edits=True, reviewed="approved")
    assert [line["custom_id"] for line in only] == [rows[0].item_id]


def test_two_reviewers_deciding_one_item_at_once_never_collide(
    session_factory: SessionFactory,
) -> None:
    """Both check the item, then write: the upsert takes the second insert of a row as an
    update (no unique violation), and the later write wins."""
    job_id = _job(session_factory, _mixed(2))
    item_id = _row(session_factory, job_id, 0).item_id
    first, second = Interleaving("review:checked").run(
        lambda: decide(session_factory, [item_id], "approved", "ann"),
        lambda: decide(session_factory, [item_id], "rejected", "bob"),
    )
    assert (first, second) == (1, 1)
    row = _row(session_factory, job_id, 0)
    assert (row.decision, row.reviewer) == ("approved", "ann")


@pytest.mark.parametrize("how", ["decide", "edit"])
def test_a_review_of_an_item_deleted_meanwhile_says_it_is_gone(
    session_factory: SessionFactory, how: str
) -> None:
    """The job is deleted between the review's check of its item and its write: the reviewer
    gets item_not_found, not a database error, and nothing is left behind."""
    job_id = _job(session_factory, _mixed(3))
    item_id = _row(session_factory, job_id, 1).item_id

    def review() -> None:
        if how == "decide":
            decide(session_factory, [item_id], "approved", "ann")
        else:
            edit(session_factory, item_id, "A barn.", "ann")

    def delete_job() -> None:
        mark_deleting(session_factory, [job_id])
        while True:
            step = delete_step(session_factory, job_id, batch=2, queue_inputs=queue_inputs_of)
            assert step is not None
            if step.job_gone:
                return

    with pytest.raises(ItemNotFoundError, match="deleted"):
        Interleaving("review:checked", window=10).run(review, delete_job)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 0
        assert session.get(Job, job_id) is None  # the deletion went through meanwhile


def test_a_chat_edit_must_validate_against_its_own_requests_schema(
    session_factory: SessionFactory,
) -> None:
    """A chat item's schema is its request's (each line of a chat job may give its own), not
    the job's: its edit is JSON checked against it, whether the model's answer passed it or
    failed it (an edited failure goes out as the answer with ``--use-edits``)."""
    request = {"messages": [{"role": "user", "text": "Total?"}], "schema": SCHEMA}
    job_id = _job(
        session_factory,
        [
            {"request": dict(request), "result_json": {"total": 3}, "result_text": '{"total": 3}'},
            {
                "request": dict(request),
                "status": "failed",
                "error_code": "output_invalid",
                "result_text": '{"total": "x"}',
            },
            {"request": {"messages": request["messages"]}, "result_text": "Three."},
        ],
        kind="chat",
    )
    passed, failed, free = list_items(session_factory, job_id, ItemFilter()).rows
    for row in (passed, failed):
        for bad, words in [('{"total": "three"}', "total"), ("{not json", "not valid JSON")]:
            with pytest.raises(RequestError) as refused:
                edit(session_factory, row.item_id, bad, "ann")
            assert refused.value.code == "review_edit_invalid", row.seq
            assert words in refused.value.message, refused.value.message
        edit(session_factory, row.item_id, '{"total": 7}', "ann")
        assert _row(session_factory, job_id, row.seq).edited_json == {"total": 7}
    edit(session_factory, free.item_id, "Seven.", "ann")  # no schema: text, as its result is
    assert _row(session_factory, job_id, free.seq).edited_text == "Seven."


def _decisions(sf: SessionFactory, job_id: str) -> dict[int, tuple[str | None, str | None]]:
    """(decision, reviewer) by seq, of every item of the job."""
    rows = list_items(sf, job_id, ItemFilter(), limit=500).rows
    return {r.seq: (r.decision, r.reviewer) for r in rows}


def test_a_bulk_decision_writes_a_window_of_the_job_per_transaction(
    session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of 4 seqs: 30 items take 8 transactions, each committed before the next, and
    together they decide what one statement over the job decided."""
    monkeypatch.setattr(decisions, "BULK_CHUNK", 4)
    job_id = _job(session_factory, _mixed(30))
    seen: list[int] = []

    def committed() -> None:  # what another session sees after each window
        with session_factory() as session:
            seen.append(session.scalar(select(func.count()).select_from(Review)) or 0)

    with pause_at("review:bulk_window", committed):
        changed = decide_filtered(session_factory, job_id, ItemFilter(), "approved", "ann")
    assert changed == 30 and seen == [4, 8, 12, 16, 20, 24, 28, 30]
    # The review state is not a (NOT) EXISTS in a window's statements: PostgreSQL hashed all of
    # the reviews table for it, window after window.
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    engine = session_factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        unreviewed = ItemFilter(review="unreviewed")
        assert decide_filtered(session_factory, job_id, unreviewed, "rejected", "bob") == 0
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements and not [s for s in statements if "EXISTS" in s]
    failed = ItemFilter(status="failed")
    assert decide_filtered(session_factory, job_id, failed, "rejected", "bob") == 10
    assert decide_filtered(session_factory, job_id, failed, "rejected", "bob") == 0
    expected = {s: ("rejected", "bob") if s % 3 == 2 else ("approved", "ann") for s in range(30)}
    assert _decisions(session_factory, job_id) == expected


def test_a_bulk_decision_stopped_half_way_and_run_again_decides_the_rest(
    session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions, "BULK_CHUNK", 4)
    job_id = _job(session_factory, _mixed(30))
    windows = 0

    def stop_at_the_third() -> None:
        nonlocal windows
        windows += 1
        if windows == 3:
            raise RuntimeError("the server went away")

    unreviewed = ItemFilter(review="unreviewed")
    with pause_at("review:bulk_window", stop_at_the_third), pytest.raises(RuntimeError):
        decide_filtered(session_factory, job_id, unreviewed, "approved", "ann")
    assert [s for s, (d, _) in _decisions(session_factory, job_id).items() if d] == list(range(12))
    assert decide_filtered(session_factory, job_id, unreviewed, "approved", "ann") == 18
    assert decide_filtered(session_factory, job_id, unreviewed, "approved", "ann") == 0
    assert set(_decisions(session_factory, job_id).values()) == {("approved", "ann")}


def test_a_single_decision_made_during_a_bulk_one_is_kept(
    session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob rejects two items while Ann approves the unreviewed view, after her first window:
    one she has approved already (his is the later decision), one she has not reached (it has
    left her view by then). Neither of his is written over."""
    monkeypatch.setattr(decisions, "BULK_CHUNK", 4)
    job_id = _job(session_factory, _mixed(30))
    ids = {r.seq: r.item_id for r in list_items(session_factory, job_id, ItemFilter()).rows}
    changed, _ = Interleaving("review:bulk_window").run(
        lambda: decide_filtered(
            session_factory, job_id, ItemFilter(review="unreviewed"), "approved", "ann"
        ),
        lambda: decide(session_factory, [ids[1], ids[20]], "rejected", "bob"),
    )
    assert changed == 29  # 4 in the first window, then 26 less the one Bob took
    found = _decisions(session_factory, job_id)
    assert found[1] == found[20] == ("rejected", "bob")
    assert {found[s] for s in range(30) if s not in (1, 20)} == {("approved", "ann")}


def test_a_reviewed_export_reads_each_pages_reviews_by_item_id_not_by_a_join(
    session_factory: SessionFactory, tmp_path: Path
) -> None:
    """A join of each page to the reviews let PostgreSQL hash the whole job's reviews for
    every page; by the page's item ids, each page reads its own reviews only."""
    job_id = _job(session_factory, _mixed(30))
    decide_filtered(session_factory, job_id, ItemFilter(status="failed"), "rejected", "ann")
    edit(session_factory, _row(session_factory, job_id, 4).item_id, "A sky.", "bob")
    statements: list[str] = []
    out = tmp_path / "out.jsonl"
    with session_factory() as session:

        def seen(*args: Any) -> None:
            statements.append(args[2])

        event.listen(session.get_bind(), "before_cursor_execute", seen)
        try:
            write_results(session, job_id, ResultFormat.jsonl, str(out), chunk=7)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", seen)
    assert not [s for s in statements if "JOIN reviews" in s]
    assert len([s for s in statements if "FROM reviews" in s]) == 1 + 5  # has_reviews; 5 pages
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["input"] for line in lines] == [f"imgs/photo-{s:04d}.png" for s in range(30)]
    assert [line["decision"] for line in lines] == [
        "rejected" if s % 3 == 2 else "approved" if s == 4 else None for s in range(30)
    ]
    assert (lines[4]["edited"], lines[4]["reviewer"]) == ("A sky.", "bob")
    assert lines[5]["reviewed_at"] is not None and lines[6]["reviewer"] is None


def test_counts_stop_at_their_bound(
    session_factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every count reads at most its bound of matching rows and says ``more`` beyond it."""
    from jobs.review import Count, item_counts, listing

    job_id = _job(session_factory, _mixed(30))
    exact = item_counts(session_factory, job_id)
    assert exact == {"succeeded": 20, "failed": 10} and not any(n.more for n in exact.values())
    monkeypatch.setattr(listing, "COUNT_BOUND", 5)
    counted = item_counts(session_factory, job_id)
    assert {state: (n, n.more) for state, n in counted.items()} == {
        "succeeded": (5, True),
        "failed": (5, True),
    }
    codes = error_codes(session_factory, job_id)  # five of each: not more than the bound
    assert [(code, n, n.more) for code, n in codes] == [
        ("image_decode_error", 5, False),
        ("input_not_found", 5, False),
    ]
    page = list_items(session_factory, job_id, ItemFilter(status="failed"), limit=4)
    assert (str(page.shown), str(page.total)) == ("5+", "5+")
    # a first page holding all its view counted them: exact beyond the bound
    assert str(list_items(session_factory, job_id, ItemFilter(text="sku-1")).shown) == "8"
    monkeypatch.setattr(listing, "COUNT_BOUND", 4)
    codes = error_codes(session_factory, job_id)
    assert [(code, str(n)) for code, n in codes] == [
        ("image_decode_error", "4+"),
        ("input_not_found", "4+"),
    ]
    assert str(Count.sum(n for _, n in codes)) == "8+"
