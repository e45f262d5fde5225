"""Extraction through the real pipeline: documents and images to schema-valid JSON, page
results kept and merged, truncation and bad PDFs as per-item errors, bad schemas refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from sqlalchemy import select

from jobs.db import Item, ItemPage, Job, SessionFactory
from jobs.dispatch import CallbackPublisher
from jobs.errors import RequestError
from jobs.extraction import merge_pages
from jobs.submit.job import submit_job
from jobs.submit.request import SubmitRequest
from model.engine import Engine, EngineSpec
from model.fake import FakeEngine
from model.schema import validate_output
from storage import Blobs
from tests.helpers import (
    INVOICE_SCHEMA,
    image_bytes,
    make_resources,
    write_encrypted_pdf,
    write_pdf,
)
from workers.local import run_job_locally


def _extract(sources: list[str], **kw: Any) -> SubmitRequest:
    fields: dict[str, Any] = dict(
        kind="extract",
        sources=sources,
        model="m",
        max_new_tokens=400,
        batch_size=4,
        schema=INVOICE_SCHEMA,
    )
    fields.update(kw)
    return SubmitRequest.of(**fields)


class Line(BaseModel):
    description: str = Field(max_length=40)
    amount: float = Field(ge=0, le=1_000_000)


class Party(BaseModel):
    name: str = Field(max_length=40)
    vat_id: str | None = Field(default=None, pattern=r"^[A-Z]{2}\d+$", max_length=14)


class PydanticInvoice(BaseModel):
    """Nested models ($defs/$ref), Optional fields (anyOf with null), a pattern."""

    seller: Party
    buyer: Party | None = None
    total: float | None = Field(default=None, ge=0, le=1_000_000)
    lines: list[Line] = Field(max_length=5)
    notes: list[str] | None = Field(default=None, max_length=3)


PYDANTIC_SCHEMA: dict[str, Any] = PydanticInvoice.model_json_schema()


def _items(sf: SessionFactory, job_id: str) -> dict[str, Item]:
    with sf() as session:
        return {
            Path(i.source).name: i
            for i in session.scalars(select(Item).where(Item.job_id == job_id))
        }


def _pages(sf: SessionFactory, item_id: str) -> list[ItemPage]:
    with sf() as session:
        return list(
            session.scalars(
                select(ItemPage).where(ItemPage.item_id == item_id).order_by(ItemPage.page_number)
            )
        )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from model.transformers_engine import load_engine

    return load_engine(EngineSpec(model="tiny-llava", cache_dir=tmp_path_factory.mktemp("m")))


def test_documents_keep_page_results_and_get_one_merged_result(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_pdf(tmp_path / "invoice.pdf", 3)
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=2)
    result = run_job_locally(_extract([str(tmp_path / "invoice.pdf")]), res, max_prompt_chars=4000)
    item = _items(session_factory, result.job_id)["invoice.pdf"]
    assert item.status == "succeeded", item.error_message
    pages = _pages(session_factory, item.id)
    assert [p.page_number for p in pages] == [1, 2, 3]
    for page in pages:
        validate_output(INVOICE_SCHEMA, page.result_json)
    validate_output(INVOICE_SCHEMA, item.result_json)
    per_page = [len(p.result_json["line_items"]) for p in pages]
    assert len(item.result_json["line_items"]) == sum(per_page)  # arrays concatenated
    assert item.result_text and item.result_text.count("\n") == 2  # raw text of every page


def test_tiny_model_output_always_validates_or_fails_its_item(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    write_pdf(folder / "a.pdf", 2)
    for i in range(3):
        (folder / f"scan{i}.png").write_bytes(image_bytes((120 + 30 * i, 160), seed=i))
    res = make_resources(session_factory, blobs, tiny, gpu_batch_size=4)
    result = run_job_locally(_extract([str(folder)], pages="all"), res, max_prompt_chars=4000)
    items = _items(session_factory, result.job_id)
    assert len(items) == 4
    for name, item in items.items():
        assert item.status == "succeeded", (name, item.error_code, item.error_message)
        validate_output(INVOICE_SCHEMA, item.result_json)
    with session_factory() as session:
        job = session.get(Job, result.job_id)
    assert job is not None and job.kind == "extract" and "vendor" in (job.prompt or "")


def test_output_that_hits_max_new_tokens_is_truncated_never_stored(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, tiny: Engine
) -> None:
    (tmp_path / "scan.png").write_bytes(image_bytes((64, 64), seed=5))
    res = make_resources(session_factory, blobs, tiny)
    result = run_job_locally(
        _extract([str(tmp_path / "scan.png")], max_new_tokens=5), res, max_prompt_chars=4000
    )
    item = _items(session_factory, result.job_id)["scan.png"]
    assert (item.status, item.error_code) == ("failed", "output_truncated")
    assert item.result_json is None


def test_bad_documents_fail_their_own_items(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    good = write_pdf(folder / "good.pdf", 1)
    write_encrypted_pdf(folder / "locked.pdf", good)
    (folder / "broken.pdf").write_bytes(good.read_bytes()[:300])
    write_pdf(folder / "long.pdf", 4)
    res = make_resources(session_factory, blobs, FakeEngine(), max_pdf_pages=3)
    result = run_job_locally(_extract([str(folder)]), res, max_prompt_chars=4000)
    codes = {
        name: (i.status, i.error_code) for name, i in _items(session_factory, result.job_id).items()
    }
    assert codes == {
        "good.pdf": ("succeeded", None),
        "locked.pdf": ("failed", "pdf_encrypted"),
        "broken.pdf": ("failed", "pdf_corrupt"),
        "long.pdf": ("failed", "pdf_too_many_pages"),
    }


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"schema": {"type": "array"}}, "schema_invalid"),
        ({"schema": {"type": "object", "properties": {"x": {"$ref": "#/y"}}}}, "schema_invalid"),
        ({"schema": None}, "schema_missing"),
        ({"pages": "3-1"}, "invalid_pages"),
        ({"dpi": 5000}, "invalid_dpi"),
    ],
)
def test_unusable_extraction_requests_are_refused_before_anything_is_written(
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    changes: dict[str, Any],
    code: str,
) -> None:
    write_pdf(tmp_path / "a.pdf", 1)
    with pytest.raises(RequestError) as refused:
        submit_job(
            _extract([str(tmp_path / "a.pdf")], **changes),
            session_factory=session_factory,
            blobs=blobs,
            publisher=CallbackPublisher(lambda _j, _i: None),
            max_prompt_chars=4000,
        )
    assert refused.value.code == code
    with session_factory() as session:
        assert session.scalars(select(Job.id)).first() is None


def test_merge_follows_refs_and_treats_optional_lists_as_lists() -> None:
    pages = [
        {"seller": {"name": ""}, "buyer": None, "lines": [{"description": "a", "amount": 1}]},
        {"seller": {"name": "ACME"}, "total": 3, "lines": [], "notes": ["n1"]},
        {"seller": {"name": "Other"}, "buyer": {"name": "Bob"}, "lines": [], "notes": None},
        {"seller": {"name": "x"}, "lines": [{"description": "b", "amount": 2}], "notes": ["n2"]},
    ]
    merged = merge_pages(PYDANTIC_SCHEMA, pages)
    assert merged == {
        "seller": {"name": ""},  # an object is kept whole: the first page's
        "buyer": {"name": "Bob"},
        "total": 3,
        "lines": [{"description": "a", "amount": 1}, {"description": "b", "amount": 2}],
        "notes": ["n1", "n2"],  # Optional[list]: concatenated, nulls skipped
    }
    PydanticInvoice.model_validate(merged)
    no_notes = merge_pages(PYDANTIC_SCHEMA, [{**pages[0], "notes": None}])
    assert no_notes["notes"] is None  # every page said null: still null, not []


def test_a_pydantic_schema_runs_through_the_pipeline(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    write_pdf(tmp_path / "invoice.pdf", 2)
    res = make_resources(session_factory, blobs, FakeEngine(), gpu_batch_size=2)
    request = _extract([str(tmp_path / "invoice.pdf")], schema=PYDANTIC_SCHEMA)
    result = run_job_locally(request, res, max_prompt_chars=4000)
    item = _items(session_factory, result.job_id)["invoice.pdf"]
    assert item.status == "succeeded", item.error_message
    for page in _pages(session_factory, item.id):
        PydanticInvoice.model_validate(page.result_json)
    invoice = PydanticInvoice.model_validate(item.result_json)
    assert len(invoice.lines) == 2  # one line per page, concatenated
