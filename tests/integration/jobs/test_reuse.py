"""Results reused across jobs (--reuse), through the real pipeline and the real tiny
transformers model, on SQLite and PostgreSQL: a hit copies the earlier result without running
the model (the worker's own generate counters prove it), and a changed input, prompt,
generation setting or model revision, or a source being deleted, is a miss."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from jobs.db import Item, Job, SessionFactory
from jobs.lifecycle import mark_deleting
from jobs.queries import read_progress
from jobs.states import ItemStatus, JobStatus
from jobs.submit.request import SubmitRequest
from model.engine import Engine, EngineSpec
from storage import Blobs
from tests.helpers import image_bytes, make_resources, write_images
from workers.local import run_job_locally
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
