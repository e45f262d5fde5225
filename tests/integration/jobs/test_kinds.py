"""The job-kind seam at submit: typed parameters, per-kind defaults resolved once, and the
rows each kind writes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from jobs.errors import RequestError
from jobs.kinds.ask import AskParams
from jobs.kinds.caption import CaptionParams
from jobs.kinds.extract import ExtractParams
from jobs.kinds.registry import KINDS, decode_params, get_kind
from jobs.submit.request import SubmitRequest, build_job
from model.schema import default_max_new_tokens
from tests.helpers import INVOICE_SCHEMA


class Line(BaseModel):
    description: str
    amount: float


class Invoice(BaseModel):
    vendor: str
    total: float
    note: str | None = None
    lines: list[Line]


def _of(kind: str, **params: Any) -> SubmitRequest:
    return SubmitRequest.of(kind, ["x"], "m", default_max_new_tokens=64, batch_size=8, **params)


def test_each_kind_has_its_defaults_in_one_place() -> None:
    caption = _of("caption")
    assert isinstance(caption.params, CaptionParams)
    assert caption.params.prompt == "Describe this image in one sentence."
    assert caption.params.max_new_tokens == 64 and caption.params.budget_chosen

    schema = Invoice.model_json_schema()
    extract = _of("extract", schema=schema)
    assert isinstance(extract.params, ExtractParams)
    assert (extract.params.pages, extract.params.dpi) == ("all", 144)
    assert extract.params.max_new_tokens == default_max_new_tokens(schema) > 64
    assert _of("extract", schema=INVOICE_SCHEMA).params.max_new_tokens > 64

    ask = _of("ask", questions=["What brand?"])
    assert isinstance(ask.params, AskParams) and ask.params.conversation is False


def test_an_explicit_max_new_tokens_wins_and_is_not_shrunk() -> None:
    extract = _of("extract", schema=INVOICE_SCHEMA, max_new_tokens=50)
    assert extract.params.max_new_tokens == 50 and not extract.params.budget_chosen


def test_parameters_round_trip_through_the_job_row() -> None:
    for request in (
        _of("caption", prompt="Name the product."),
        _of("extract", schema=Invoice.model_json_schema(), pages="1-2", dpi=100),
        _of("ask", questions=["a?", "b?"], conversation=True),
    ):
        job, _ = build_job(request, [], [])
        kind = get_kind(job.kind)
        assert decode_params(kind, job.params) == request.params


def test_unknown_kinds_and_bad_parameters_are_request_errors() -> None:
    with pytest.raises(RequestError) as unknown:
        _of("translate")
    assert unknown.value.code == "invalid_kind"
    with pytest.raises(RequestError) as bad:
        _of("extract", schema=INVOICE_SCHEMA, dpi="high")
    assert bad.value.code == "invalid_request" and "dpi" in bad.value.message
    assert set(KINDS) == {"caption", "extract", "ask", "chat", "locate"}
