"""Outcomes the worker decides itself, before any generation: an input that failed."""

from __future__ import annotations

import logging

from jobs.lifecycle import ClaimedItem
from jobs.outcome import ItemOutcome, Outcome

log = logging.getLogger(__name__)


def failed(item: ClaimedItem, code: str, message: str) -> ItemOutcome:
    log.info("item failed item=%s job=%s code=%s", item.id, item.job_id, code)
    return ItemOutcome(item.id, item.lease_token, Outcome(error_code=code, error_message=message))
