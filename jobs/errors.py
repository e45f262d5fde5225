"""Errors of the jobs package.

Each carries a stable ``code`` and one human sentence. Three kinds, as DESIGN.md says: a
request error (refused at submit, nothing written), a transient error (retry with backoff), and
per-item codes (an item ends ``failed`` with that code; see ``ItemErrorCode``).
"""

from __future__ import annotations

from enum import StrEnum


class ItemErrorCode(StrEnum):
    """Codes stored in ``items.error_code``; documented in the README, stable."""

    empty_input = "empty_input"
    image_decode_error = "image_decode_error"
    image_too_large = "image_too_large"
    unsupported_format = "unsupported_format"
    input_not_found = "input_not_found"
    input_too_large = "input_too_large"
    input_access_denied = "input_access_denied"
    invalid_uri = "invalid_uri"
    prompt_too_long = "prompt_too_long"
    pdf_encrypted = "pdf_encrypted"
    pdf_corrupt = "pdf_corrupt"
    pdf_too_many_pages = "pdf_too_many_pages"
    pdf_page_out_of_range = "pdf_page_out_of_range"
    document_too_large = "document_too_large"
    output_truncated = "output_truncated"
    output_invalid = "output_invalid"
    storage_unavailable = "storage_unavailable"
    out_of_memory = "out_of_memory"
    worker_lost = "worker_lost"
    internal_error = "internal_error"


class JobsError(Exception):
    """Base: something the caller should see as one line, with a stable code."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestError(JobsError):
    """Raised at submit when the request is invalid; nothing has been written."""

    code = "invalid_request"
    exit_code = 2


class JobNotFoundError(JobsError):
    """Raised when a job id (or unique prefix) matches no job."""

    code = "job_not_found"
    exit_code = 3


class SchemaMissingError(JobsError):
    """Raised when the database has no llava-batch tables yet."""

    code = "schema_missing"
    exit_code = 4


class DatabaseUnavailableError(JobsError):
    """Raised when the database cannot be reached; transient, callers retry with backoff."""

    code = "database_unavailable"
    exit_code = 5
