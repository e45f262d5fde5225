"""Results reused across jobs (--reuse), through the real pipeline and the real tiny
transformers model, on SQLite and PostgreSQL: a hit copies the earlier result without running
the model (the worker's own generate counters prove it), and a changed input, prompt,
generation setting or model revision, or a source being deleted, is a miss."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select, text

from jobs.db import Item, ItemPage, Job, SessionFactory, utcnow
from jobs.lifecycle import claim_items, mark_deleting
from jobs.queries import read_progress
from jobs.states import ItemStatus, JobStatus
from jobs.submit.openai_reader import BatchFormat
from jobs.submit.request import SubmitRequest
from model.engine import Engine, EngineSpec
from storage import Blobs
from tests.helpers import (
    INVOICE_SCHEMA,
    image_bytes,
    make_resources,
    submit_captions,
    write_images,
    write_pdf,
)
from workers.local import run_job_locally
from workers.pipeline import reuse_earlier_results
from workers.resources import WorkerResources

MODEL = "tiny-llava"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(checkpoints: Path) -> Engine:
    from model.transformers_engine import load_engine

    return load_engine(EngineSpec(model=MODEL, cache_dir=checkpoints, device="cpu"))


@pytest.fixture(scope="module")
def tiny_next_revision(checkpoints: Path, tiny: Engine) -> Engine:
    """The same model name at another revision: a copy of the checkpoint whose config
    changed (a key the model ignores), as a re-published checkpoint would."""
    from model.tiny import ensure_tiny_checkpoint
    from model.transformers_engine import load_engine

    copy = checkpoints / "republished"
    shutil.copytree(ensure_tiny_checkpoint(checkpoints, MODEL), copy)
    config = json.loads((copy / "config.json").read_text())
    config["republished"] = True
    (copy / "config.json").write_text(json.dumps(config))
    engine = load_engine(EngineSpec(model=str(copy), device="cpu"))
    assert engine.revision != tiny.revision and engine.revision is not None
    return engine


def _worker(sf: SessionFactory, blobs: Blobs, engine: Engine) -> WorkerResources:
    """A worker serving ``tiny-llava`` (it records the model and revision on what it runs)."""
    return replace(make_resources(sf, blobs, engine, model=MODEL), serves_model=True)


def _generated() -> tuple[float, float]:
    """The worker's own counters of model work: generate calls and tokens generated."""
    calls = REGISTRY.get_sample_value("llava_batch_generate_duration_seconds_count") or 0.0
    tokens = REGISTRY.get_sample_value("llava_batch_tokens_generated_total") or 0.0
    return calls, tokens


def _run(
    sf: SessionFactory, blobs: Blobs, engine: Engine, sources: list[str], **given: Any
) -> tuple[str, dict[str, Item], tuple[float, float]]:
    """Runs a caption job; returns its id, its items by source, and the model work it cost."""
    params: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 4, **given}
    request = SubmitRequest.of("caption", sources, MODEL, **params)
    before = _generated()
    result = run_job_locally(request, _worker(sf, blobs, engine), max_prompt_chars=1000)
    after = _generated()
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == result.job_id)).all()
        job = session.get(Job, result.job_id)
    assert job is not None and job.status == JobStatus.completed
    assert all(item.status == ItemStatus.succeeded for item in items)
    return result.job_id, {i.source: i for i in items}, (after[0] - before[0], after[1] - before[1])


def test_a_resubmitted_catalogue_runs_only_its_new_and_changed_images(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    catalogue = tmp_path / "catalogue"
    write_images(catalogue, 6)
    _, first, cost = _run(session_factory, blobs, tiny, [str(catalogue)])
    assert cost[0] > 0 and cost[1] > 0
    assert all(i.reuse_key and i.reused_from is None for i in first.values())

    # Two new photos, and one replaced by other bytes under the same name.
    for n in range(2):
        (catalogue / f"new{n}.png").write_bytes(image_bytes((48, 32), seed=500 + n))
    changed = catalogue / "img002.png"
    changed.write_bytes(image_bytes((40, 30), seed=999))
    job_id, second, cost = _run(session_factory, blobs, tiny, [str(catalogue)], reuse=True)

    ran = {s for s, i in second.items() if i.reused_from is None}
    assert ran == {str(changed), *(str(p) for p in catalogue.glob("new*"))}
    for source, item in second.items():
        if source in ran:
            continue
        earlier = first[source]
        assert item.reused_from == earlier.id
        assert item.result_text == earlier.result_text and item.result_text
        assert item.finish_reason == earlier.finish_reason
        assert item.model == MODEL and item.model_revision == earlier.model_revision
        # No tokens: none were spent on it.
        assert item.prompt_tokens is None and item.completion_tokens is None
    # The model generated for the three that ran, and not one token more.
    assert cost[1] == sum(second[s].completion_tokens or 0 for s in ran) > 0

    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        progress = read_progress(session, job)
    assert progress.counts["succeeded"] == 8
    assert progress.usage is not None and progress.usage.reused_items == 5
    assert progress.usage.completion_tokens == sum(second[s].completion_tokens or 0 for s in ran)
    shown = progress.as_dict()
    assert shown["reused"] == 5 and shown["counts"]["succeeded"] == 8

    # The same again: every result is there, so the model does not run at all.
    _, third, cost = _run(session_factory, blobs, tiny, [str(catalogue)], reuse=True)
    assert cost == (0, 0)
    for source, item in third.items():
        # A copy names the item the model ran for, never another copy.
        origin = second[source].reused_from or second[source].id
        assert item.reused_from == origin
        assert item.result_text == second[source].result_text


def test_without_reuse_every_item_runs_though_the_results_are_there(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "c", 3)
    _run(session_factory, blobs, tiny, [str(tmp_path / "c")])
    _, items, cost = _run(session_factory, blobs, tiny, [str(tmp_path / "c")])
    assert cost[0] > 0 and all(i.reused_from is None for i in items.values())


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "Name the colour of this product."},
        {"max_new_tokens": 5},
    ],
    ids=["prompt", "max_new_tokens"],
)
def test_a_changed_prompt_or_generation_setting_is_a_miss(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    tiny: Engine,
    changed: dict[str, Any],
) -> None:
    write_images(tmp_path / "c", 3)
    _run(session_factory, blobs, tiny, [str(tmp_path / "c")])
    _, items, cost = _run(
        session_factory, blobs, tiny, [str(tmp_path / "c")], reuse=True, **changed
    )
    assert cost[0] > 0 and all(i.reused_from is None for i in items.values())
    # Asked the same way again, the changed job's own results are reused.
    _, again, cost = _run(
        session_factory, blobs, tiny, [str(tmp_path / "c")], reuse=True, **changed
    )
    assert cost == (0, 0)
    assert {s: i.reused_from for s, i in again.items()} == {s: i.id for s, i in items.items()}


def test_another_revision_of_the_model_is_a_miss(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    tiny: Engine,
    tiny_next_revision: Engine,
) -> None:
    write_images(tmp_path / "c", 3)
    _run(session_factory, blobs, tiny, [str(tmp_path / "c")])
    _, items, cost = _run(
        session_factory, blobs, tiny_next_revision, [str(tmp_path / "c")], reuse=True
    )
    assert cost[0] > 0 and all(i.reused_from is None for i in items.values())
    assert {i.model_revision for i in items.values()} == {tiny_next_revision.revision}


def test_a_job_being_deleted_is_no_source(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_images(tmp_path / "c", 3)
    first_id, _, _ = _run(session_factory, blobs, tiny, [str(tmp_path / "c")])
    mark_deleting(session_factory, [first_id])
    _, items, cost = _run(session_factory, blobs, tiny, [str(tmp_path / "c")], reuse=True)
    assert cost[0] > 0 and all(i.reused_from is None for i in items.values())


def _openai_job(
    sf: SessionFactory, blobs: Blobs, engine: Engine, folder: Path, bodies: dict[str, Any]
) -> tuple[dict[str, Item], tuple[float, float]]:
    """Runs an OpenAI-Batch file of ``bodies`` by custom_id, with --reuse; returns its items by
    custom_id and the model work it cost."""
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
        for cid, body in bodies.items()
    ]
    batch = folder / f"requests-{len(list(folder.glob('*.jsonl')))}.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    request = SubmitRequest.of(
        "chat", [str(batch)], MODEL, input_format=BatchFormat.auto, reuse=True
    )
    before = _generated()
    result = run_job_locally(request, _worker(sf, blobs, engine), max_prompt_chars=4000)
    after = _generated()
    with sf() as session:
        items = session.scalars(select(Item).where(Item.job_id == result.job_id)).all()
    assert all(item.status == ItemStatus.succeeded for item in items)
    return {i.custom_id or "": i for i in items}, (after[0] - before[0], after[1] - before[1])


def _body(image: str, **given: Any) -> dict[str, Any]:
    content = [
        {"type": "text", "text": "Describe the product."},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_completion_tokens": 6,
        **given,
    }


def test_openai_requests_reuse_greedy_and_seeded_answers_only(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """Greedy decoding and a seeded draw give the same text for the same request in any batch,
    so they are reused; a draw without a seed is a new one each run, and is never passed off
    as one; a changed sampling setting, stop or token budget is another request."""
    write_images(tmp_path / "photos", 1)
    image = "photos/img000.png"
    seeded = {"temperature": 1.3, "seed": 99}
    asked = {
        "greedy": _body(image),
        "seeded": _body(image, **seeded),
        "unseeded": _body(image, temperature=1.3),
    }
    first, _ = _openai_job(session_factory, blobs, tiny, tmp_path, asked)
    assert first["unseeded"].reuse_key is None

    changed = {
        "hotter": _body(image, temperature=1.5, seed=99),
        "stopped": _body(image, stop=["zzz"]),
        "longer": _body(image, max_completion_tokens=7),
    }
    second, cost = _openai_job(session_factory, blobs, tiny, tmp_path, {**asked, **changed})
    assert second["greedy"].reused_from == first["greedy"].id
    assert second["seeded"].reused_from == first["seeded"].id
    assert second["seeded"].result_text == first["seeded"].result_text
    ran = {"unseeded", *changed}
    assert {cid for cid, item in second.items() if item.reused_from is None} == ran
    assert cost[1] == sum(second[cid].completion_tokens or 0 for cid in ran)


def test_a_document_reuses_its_page_results_too(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    write_pdf(tmp_path / "invoice.pdf", 2)
    ask = {"schema": INVOICE_SCHEMA, "pages": "all", "max_new_tokens": 400}

    def extract(**given: Any) -> tuple[Item, list[ItemPage], tuple[float, float]]:
        request = SubmitRequest.of(
            "extract", [str(tmp_path / "invoice.pdf")], MODEL, **ask, **given
        )
        before = _generated()
        result = run_job_locally(
            request, _worker(session_factory, blobs, tiny), max_prompt_chars=4000
        )
        after = _generated()
        with session_factory() as session:
            item = session.scalars(select(Item).where(Item.job_id == result.job_id)).one()
            pages = session.scalars(
                select(ItemPage).where(ItemPage.item_id == item.id).order_by(ItemPage.page_number)
            ).all()
        assert item.status == ItemStatus.succeeded, item.error_message
        return item, list(pages), (after[0] - before[0], after[1] - before[1])

    first, first_pages, _ = extract()
    again, pages, cost = extract(reuse=True)
    assert cost == (0, 0) and again.reused_from == first.id
    assert again.result_json == first.result_json and again.result_text == first.result_text
    assert [(p.page_number, p.result_json, p.result_text) for p in pages] == [
        (p.page_number, p.result_json, p.result_text) for p in first_pages
    ]
    assert len(pages) == 2 and all(p.tokens_out is None for p in pages)


def test_the_lookup_is_one_indexed_read_per_batch_and_nothing_without_reuse(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """The hot path: a batch of a job that asked for reuse costs one read (through the partial
    index ix_items_reuse_key, among many results of the same model) and one write; any other
    job's batch costs nothing more than before."""
    write_images(tmp_path / "c", 8)
    first_id, _, _ = _run(session_factory, blobs, tiny, [str(tmp_path / "c")], max_new_tokens=8)
    res = _worker(session_factory, blobs, tiny)
    engine = session_factory.kw["bind"]
    postgres = engine.dialect.name == "postgresql"
    _many_results(session_factory, first_id, tiny.revision, postgres=postgres)

    sent: list[tuple[str, Any]] = []

    def note(_c: object, _cur: object, statement: str, params: Any, *_: object) -> None:
        sent.append((statement, params))

    # On PostgreSQL the copies commit without waiting for the disk flush, as a record does.
    copying = ["SELECT", "UPDATE", *(["SET"] if postgres else [])]
    for reuse, expected in ((False, []), (True, copying)):
        _, ids = submit_captions(
            session_factory, blobs, tmp_path, n=8, model=MODEL, reuse=reuse, batch_size=8
        )
        claimed = claim_items(
            session_factory, ids, worker="w", lease_seconds=60, serving=res.serving
        )
        sent.clear()
        event.listen(engine, "before_cursor_execute", note)
        try:
            reused = reuse_earlier_results(claimed, res)
        finally:
            event.remove(engine, "before_cursor_execute", note)
        assert [s.split(None, 1)[0].upper() for s, _ in sent] == expected
        assert len(reused) == (8 if reuse else 0)

    lookup, params = sent[0]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + lookup, params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    assert "ix_items_reuse_key" in plan, plan


def _many_results(sf: SessionFactory, job_id: str, revision: str | None, *, postgres: bool) -> None:
    """20,000 more succeeded results of the same model in ``job_id``, and fresh statistics
    (PostgreSQL's, which then knows most items are succeeded: SQLite has none unless asked)."""
    numbers = (
        "SELECT g AS n FROM generate_series(1, 20000) AS g"
        if postgres
        else "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20000) "
        "SELECT n FROM s"
    )
    with sf.begin() as session:
        session.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at, reuse_key, model, model_revision, quantization) "
                "SELECT 'many-' || n, :job, 1000 + n, 's', 'u', 'succeeded', 1, 0, "
                ":now, 'k-' || n, :model, :revision, 'none' FROM (" + numbers + ") AS numbers"
            ),
            {"job": job_id, "now": utcnow(), "model": MODEL, "revision": revision},
        )
    if postgres:
        with sf.begin() as session:
            session.execute(text("ANALYZE items"))


def test_a_document_copied_while_its_source_is_deleted_keeps_its_pages(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """The source's job is deleted while a copy of it is being recorded (the copy's item
    written, its pages not yet): the deletion waits for the copy, so the copy has the source's
    pages, never a document result without them (PostgreSQL reads each statement anew; on
    SQLite the copy's write holds the database already)."""
    from jobs.hooks import pause_at
    from jobs.retention.purge import delete_jobs
    from jobs.submit.job import submit_job
    from tests.helpers import ListPublisher

    sf = session_factory
    write_pdf(tmp_path / "invoice.pdf", 2)
    ask = {"schema": INVOICE_SCHEMA, "pages": "all", "max_new_tokens": 400}
    source = run_job_locally(
        SubmitRequest.of("extract", [str(tmp_path / "invoice.pdf")], MODEL, **ask),
        _worker(sf, blobs, tiny),
        max_prompt_chars=4000,
    ).job_id
    again = submit_job(
        SubmitRequest.of("extract", [str(tmp_path / "invoice.pdf")], MODEL, reuse=True, **ask),
        session_factory=sf,
        blobs=blobs,
        publisher=ListPublisher(),
        max_prompt_chars=4000,
    ).job_id
    res = _worker(sf, blobs, tiny)
    with sf() as session:
        ids = list(session.scalars(select(Item.id).where(Item.job_id == again)))
    claimed = claim_items(sf, ids, worker="w", lease_seconds=60, serving=res.serving)
    postgres = sf.kw["bind"].dialect.name == "postgresql"

    copied, go_on = threading.Event(), threading.Event()
    deleting, deleted = threading.Event(), threading.Event()

    def hold() -> None:
        copied.set()
        assert go_on.wait(30)

    found: dict[str, str] = {}

    def copy() -> None:
        with pause_at("reuse:copied", hold):
            found.update(reuse_earlier_results(claimed, res))

    def delete() -> None:
        deleting.set()
        delete_jobs(sf, blobs, [source], batch=100)
        deleted.set()

    copier = threading.Thread(target=copy)
    copier.start()
    try:
        assert copied.wait(30)
        deleter = threading.Thread(target=delete)
        deleter.start()
        assert deleting.wait(30)
        # Let the deletion run as far as it can: to its end, or to a wait on the copy's locks.
        deadline = time.monotonic() + 30
        while postgres and not deleted.is_set() and time.monotonic() < deadline:
            with sf() as session:
                if session.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                    break
            time.sleep(0.02)
    finally:
        go_on.set()
        copier.join(30)
    deleter.join(60)
    assert deleted.is_set()
    with sf() as session:
        item = session.get(Item, ids[0])
        pages = session.scalars(select(ItemPage).where(ItemPage.item_id == ids[0])).all()
    assert item is not None
    if found:  # copied: with the pages the source had
        assert item.status == ItemStatus.succeeded and len(pages) == 2
    else:  # or not copied, and left to run
        assert item.status == ItemStatus.running and not pages


def test_among_several_sources_the_lowest_id_and_never_a_copy(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """Two earlier runs of the same catalogue, then a copy of it: each item copies the source
    of the lowest id; a fourth job copies a source too, never the third job's copies."""
    write_images(tmp_path / "c", 2)
    folder = [str(tmp_path / "c")]
    _, first, _ = _run(session_factory, blobs, tiny, folder)
    _, second, _ = _run(session_factory, blobs, tiny, folder)
    for _ in range(2):
        _, copies, cost = _run(session_factory, blobs, tiny, folder, reuse=True)
        assert cost == (0, 0)
        for source, item in copies.items():
            assert item.reused_from == min(first[source].id, second[source].id)


def test_a_worker_whose_revision_is_unknown_reuses_nothing(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """The same model name at an unknown revision may be another model: no copy, the items are
    left to run, though a source of that name is there."""
    from jobs.lifecycle.reuse import reuse_results

    write_images(tmp_path / "c", 2)
    _run(session_factory, blobs, tiny, [str(tmp_path / "c")], max_new_tokens=6)
    res = _worker(session_factory, blobs, tiny)
    assert res.serving is not None
    unknown = replace(res.serving, revision=None)
    _, ids = submit_captions(
        session_factory, blobs, tmp_path, n=2, model=MODEL, reuse=True, max_new_tokens=6
    )
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60, serving=unknown)
    assert len(claimed) == 2 and all(item.reuse_key for item in claimed)
    assert reuse_results(session_factory, claimed, unknown) == {}
    known = reuse_results(session_factory, claimed, replace(unknown, revision=tiny.revision))
    assert len(known) == 2  # the same items, where the revision is known: copied


def test_a_lookup_the_database_refuses_costs_only_the_saving(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """A database error in the lookup (here a column it reads is gone: a real error of either
    database) leaves the claimed items to run, nothing written, and the worker goes on."""
    write_images(tmp_path / "c", 2)
    _run(session_factory, blobs, tiny, [str(tmp_path / "c")], max_new_tokens=6)
    res = _worker(session_factory, blobs, tiny)
    _, ids = submit_captions(
        session_factory, blobs, tmp_path, n=2, model=MODEL, reuse=True, max_new_tokens=6
    )
    claimed = claim_items(session_factory, ids, worker="w", lease_seconds=60, serving=res.serving)
    rename = "ALTER TABLE items RENAME COLUMN {} TO {}"
    with session_factory.begin() as session:
        session.execute(text(rename.format("reused_from", "reused_from_gone")))
    try:
        assert reuse_earlier_results(claimed, res) == {}
    finally:
        with session_factory.begin() as session:
            session.execute(text(rename.format("reused_from_gone", "reused_from")))
    with session_factory() as session:
        states = session.scalars(select(Item.status).where(Item.id.in_(ids))).all()
    assert set(states) == {ItemStatus.running}
    assert len(reuse_earlier_results(claimed, res)) == 2  # the database back: copied


def test_a_schedule_with_reuse_answers_a_resent_input_from_its_earlier_result(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    """A scheduled extraction's inbox gets the same invoice again under a new name: with
    ``schedule add … --reuse`` its job copies the earlier answer; a schedule without reuse runs
    the model for it."""
    from jobs.schedules import add_schedule, fire_due_schedules
    from tests.helpers import ListPublisher
    from workers.local import work_locally

    worker = _worker(session_factory, blobs, tiny)
    jobs: dict[str, list[Item]] = {}
    for reuse in (True, False):
        inbox = tmp_path / f"inbox-{reuse}"
        write_images(inbox, 2)
        request = SubmitRequest.of(
            "caption", [str(inbox)], MODEL, max_new_tokens=6, batch_size=4, reuse=reuse
        )
        name = f"inbox-{reuse}"
        start = utcnow()
        add_schedule(
            session_factory,
            name=name,
            source=str(inbox),
            request=request,
            every="1h",
            cron=None,
            max_prompt_chars=1000,
            now=start,
        )
        (first,) = fire_due_schedules(session_factory, blobs, ListPublisher(), names=[name])
        assert work_locally(first, worker)
        shutil.copy(inbox / "img000.png", inbox / "resent.png")  # the same bytes, a new name
        before = _generated()
        (second,) = fire_due_schedules(session_factory, blobs, ListPublisher(), names=[name])
        assert work_locally(second, worker)
        with session_factory() as session:
            job = session.get(Job, second)
            assert job is not None and job.status == JobStatus.completed
            assert bool(job.params.get("reuse")) is reuse
            jobs[name] = list(session.scalars(select(Item).where(Item.job_id == second)))
            (earlier,) = session.scalars(
                select(Item).where(Item.job_id == first, Item.source.endswith("img000.png"))
            )
        (resent,) = jobs[name]
        assert resent.source.endswith("resent.png") and resent.status == ItemStatus.succeeded
        if reuse:
            assert resent.reused_from == earlier.id
            assert resent.result_text == earlier.result_text
            assert _generated() == before  # the model did not run
        else:
            assert resent.reused_from is None
            assert _generated()[0] > before[0]
