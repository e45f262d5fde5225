"""Our rows in the OpenAI Batch API's shapes (docs/openai-format.md is the contract): one output
line per finished item (``output_line``), and a job as a batch object (``batch_object``, what
``status --format openai`` prints), each as OpenAI writes it, so a reader written for a hosted
batch reads ours unchanged.

A failed item is a request the server answered with an error: a ``response`` whose status says
whose fault it was (``STATUS_CODES``: 4xx the request's, sending it again changes nothing; 5xx
ours) and whose body is an error object. Only what OpenAI writes as a batch-level error goes in
the line's top-level ``error``: ``batch_cancelled`` and ``batch_expired``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.db import Item, Job
from jobs.durations import written_period
from jobs.errors import ItemErrorCode as Code
from jobs.paging import ItemRecord
from jobs.queries import JobProgress, find_job, item_usage, read_progress
from jobs.states import ItemStatus, JobStatus
from jobs.submit.openai_reader import CHAT_COMPLETIONS

# The HTTP status of each failed item's response, by its error code; a code not listed is 500.
STATUS_CODES: dict[str, int] = {
    Code.empty_input: 400,
    Code.image_decode_error: 400,
    Code.image_too_large: 400,
    Code.unsupported_format: 400,
    Code.input_not_found: 404,
    Code.input_too_large: 400,
    Code.input_access_denied: 403,
    Code.invalid_uri: 400,
    Code.input_scheme_not_allowed: 400,
    Code.input_not_allowed: 403,
    Code.prompt_too_long: 400,
    Code.too_many_images: 400,
    Code.images_not_supported: 400,  # the request's images, not the server, are the matter
    Code.pdf_encrypted: 400,
    Code.pdf_corrupt: 400,
    Code.pdf_too_many_pages: 400,
    Code.pdf_page_out_of_range: 400,
    Code.document_too_large: 400,
    Code.output_truncated: 400,  # the request's own token budget was too small for its JSON
    Code.schema_invalid: 400,
    Code.output_invalid: 500,
    Code.storage_unavailable: 503,
    Code.out_of_memory: 500,
    Code.worker_lost: 500,
    Code.storage_error: 500,
    Code.internal_error: 500,
}

CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not run: its batch was cancelled first.",
}

ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# Nothing is cached between requests and nothing is reasoned apart: these are zero, and present
# because readers of OpenAI's output index them.
PROMPT_DETAILS = {"cached_tokens": 0, "audio_tokens": 0}
COMPLETION_DETAILS = {
    "reasoning_tokens": 0,
    "audio_tokens": 0,
    "accepted_prediction_tokens": 0,
    "rejected_prediction_tokens": 0,
}


def custom_id(item: ItemRecord) -> str:
    """The request's ``custom_id``; an item that had none (a file of a folder) answers to its
    item id, which is stable."""
    return item.custom_id if item.custom_id is not None else item.id


def status_code(error_code: str) -> int:
    return STATUS_CODES.get(error_code, 500)


def success_line(item: ItemRecord, model: str, *, edited: Any | None = None) -> dict[str, Any]:
    """A succeeded item: its answer as a ``chat.completion``. ``edited``: a reviewer's edit
    (``jobs.review``: text, or JSON), the message's content in place of the model's."""
    if edited is not None:
        content = edited if isinstance(edited, str) else json.dumps(edited, ensure_ascii=False)
    elif item.result_json is not None:
        content = json.dumps(item.result_json, ensure_ascii=False)
    else:
        content = item.result_text or ""
    usage = item_usage(item) or ZERO_USAGE
    when = item.finished_at or item.created_at
    body = {
        "id": f"chatcmpl-{item.id}",
        "object": "chat.completion",
        "created": int(when.timestamp()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": item.finish_reason or "stop",
            }
        ],
        "usage": {
            **usage,
            "prompt_tokens_details": PROMPT_DETAILS,
            "completion_tokens_details": COMPLETION_DETAILS,
        },
        "service_tier": None,
        "system_fingerprint": fingerprint(item.model or model, item.model_revision),
    }
    return _line(item, {"status_code": 200, "request_id": item.id, "body": body}, None)


def fingerprint(model: str, revision: str | None) -> str:
    """Stands for the model build that answered, as OpenAI's does for its backend: the same
    for every answer of one model at one revision."""
    digest = hashlib.sha256(f"{model}\0{revision or ''}".encode()).hexdigest()
    return f"fp_{digest[:12]}"


def error_line(item: ItemRecord) -> dict[str, Any]:
    """A failed, cancelled or expired item."""
    if item.status == ItemStatus.cancelled:
        return _line(item, None, dict(CANCELLED))
    if item.status == ItemStatus.expired:
        message = item.error_message or "Its batch's completion window passed before it ran."
        return _line(item, None, {"code": Code.batch_expired.value, "message": message})
    code = item.error_code or Code.internal_error.value
    status = status_code(code)
    error = {
        "message": item.error_message or code,
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": None,
        "code": code,
    }
    response = {"status_code": status, "request_id": item.id, "body": {"error": error}}
    return _line(item, response, None)


def _line(
    item: ItemRecord, response: dict[str, Any] | None, error: dict[str, str] | None
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{item.id}",
        "custom_id": custom_id(item),
        "response": response,
        "error": error,
    }


def batch_status(job: Job, progress: JobProgress) -> str:
    """OpenAI's name for the job's state: an unfinished job is ``validating`` while its input is
    still being written and nothing has started, ``finalizing`` once nothing of it is left to
    run but it has not ended yet, ``in_progress`` otherwise; every other state has OpenAI's
    name already."""
    if job.status not in (JobStatus.queued, JobStatus.in_progress):
        return job.status
    if job.submit_lease_expires_at is not None and job.started_at is None:
        return "validating"
    unfinished = progress.counts.get(ItemStatus.queued, 0) + progress.counts.get(
        ItemStatus.running, 0
    )
    return "in_progress" if unfinished else "finalizing"


def batch_object(session: Session, job_ref: str) -> dict[str, Any]:
    """The job as an OpenAI ``Batch`` object."""
    job = find_job(session, job_ref)
    progress = read_progress(session, job, turn=False)
    status = batch_status(job, progress)
    ended = _epoch(job.finished_at)
    usage = progress.usage
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": CHAT_COMPLETIONS,  # the one endpoint a request line may name
        "model": job.model,
        "errors": _failures(session, job.id) if status == JobStatus.failed else None,
        "input_file_id": job.id,  # no files here: the job holds its requests
        "completion_window": (
            written_period(job.completion_window_seconds)
            if job.completion_window_seconds is not None
            else "none"
        ),
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": _epoch(job.created_at),
        "in_progress_at": _epoch(job.started_at),
        "expires_at": _epoch(job.expires_at),
        # A job ends in one step: it finalises when it ends.
        "finalizing_at": ended if status in (JobStatus.completed, JobStatus.failed) else None,
        "completed_at": ended if status == JobStatus.completed else None,
        "failed_at": ended if status == JobStatus.failed else None,
        "expired_at": ended if status == JobStatus.expired else None,
        "cancelling_at": None,  # not recorded
        "cancelled_at": ended if status == JobStatus.cancelled else None,
        "request_counts": progress.request_counts,
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens,
        },
        "metadata": job.job_metadata or None,
    }


def _failures(session: Session, job_id: str) -> dict[str, Any]:
    """A failed job's errors (every request failed): one per error code, with how many and the
    first one's sentence."""
    code = func.coalesce(Item.error_code, Code.internal_error.value)
    failed = (Item.job_id == job_id, Item.status == ItemStatus.failed)
    groups = session.execute(
        select(code, func.count(), func.min(Item.seq)).where(*failed).group_by(code)
    ).all()
    first_seqs = [seq for _, _, seq in groups]
    firsts = {
        seq: message
        for seq, message in session.execute(
            select(Item.seq, Item.error_message).where(*failed, Item.seq.in_(first_seqs))
        )
    }
    data = [
        {
            "code": error_code,
            "message": f"{count} request(s) failed with {error_code}: "
            f"{firsts.get(seq) or error_code}",
            "param": None,
            "line": None,
        }
        for error_code, count, seq in sorted(groups, key=lambda group: group[2])
    ]
    return {"object": "list", "data": data}


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())
