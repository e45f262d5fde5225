"""From generated text to what is recorded: a caption, or a validated extraction (with the
pages of a document kept and merged)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from jobs.extraction import PageOutcome, interpret_output, merge_pages
from jobs.lifecycle import ClaimedItem, ItemOutcome
from workers.generation import Generated

log = logging.getLogger(__name__)


def failed(item: ClaimedItem, code: str, message: str) -> ItemOutcome:
    log.info("item failed item=%s job=%s code=%s", item.id, item.job_id, code)
    return ItemOutcome(item.id, item.lease_token, error_code=code, error_message=message)


def build_outcome(
    item: ClaimedItem, generated: Sequence[Generated], schema: Mapping[str, Any] | None
) -> ItemOutcome:
    if schema is None:
        (only,) = generated
        if only.error_code:
            return failed(item, only.error_code, only.error_message or only.error_code)
        return ItemOutcome(item.id, item.lease_token, text=only.text, tokens_out=only.tokens_out)
    pages = [_page(schema, g) for g in generated]
    good = [p for p in pages if p.error_code is None]
    is_document = generated[0].unit.page is not None
    if not good:
        first = pages[0]
        outcome = failed(item, first.error_code or "", first.error_message or "")
        return _with_pages(outcome, pages) if is_document else outcome
    tokens = sum(p.tokens_out or 0 for p in pages)
    if not is_document:
        return ItemOutcome(
            item.id, item.lease_token, text=good[0].text, json=good[0].json, tokens_out=tokens
        )
    merged = merge_pages(schema, [p.json for p in good])
    raw = "\n".join(p.text or "" for p in pages)
    return _with_pages(
        ItemOutcome(item.id, item.lease_token, text=raw, json=merged, tokens_out=tokens), pages
    )


def _page(schema: Mapping[str, Any], g: Generated) -> PageOutcome:
    number = g.unit.page or 1
    if g.error_code:
        return PageOutcome(number, error_code=g.error_code, error_message=g.error_message)
    return interpret_output(
        schema, g.text or "", finished=g.finished, number=number, tokens_out=g.tokens_out or 0
    )


def _with_pages(outcome: ItemOutcome, pages: list[PageOutcome]) -> ItemOutcome:
    return replace(outcome, pages=tuple(pages))
