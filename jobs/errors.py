"""Errors of the jobs package.

Each carries a stable ``code`` and one human sentence. Three kinds, as
docs/design.md#errors-three-kinds says: a request error (refused at submit, nothing written), a
transient error (retry with backoff), and per-item codes (an item ends ``failed`` with that
code; see ``ItemErrorCode``).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Every status ``llava-batch`` exits with: the one table. The table in docs/errors.md is
    checked against this one in both directions; each error class below names its own status,
    and the CLI's boundary (``jobs.cli.errors``) maps every foreign error onto one of these."""

    ok = 0
    internal_error = 1  # a genuine bug, and nothing else
    invalid_request = 2  # usage errors, refused requests, bad configuration: nothing written
    not_found = 3  # no such job (or schedule)
    schema_missing = 4  # the database has no llava-batch tables yet
    database_unavailable = 5
    job_not_completed = 6  # --wait / run: the job ended failed or cancelled
    model_load_error = 7  # the checkpoint is missing, pickle-only or wants remote code
    job_not_finished = 8  # delete: the job has not ended (cancel it first, or wait)
    wait_timeout = 9  # --wait / --watch --timeout: the job had not ended when it passed
    interrupted = 130  # Ctrl-C, or end of input at a prompt
    # stdout's reader went away (``results JOB | head``): silent, with the status a shell
    # reports for a filter SIGPIPE ended (128 + 13), as ``cat`` would leave
    output_closed = 141


class ItemErrorCode(StrEnum):
    """Codes stored in ``items.error_code``; documented in docs/errors.md, stable."""

    empty_input = "empty_input"
    image_decode_error = "image_decode_error"
    image_too_large = "image_too_large"
    unsupported_format = "unsupported_format"
    input_not_found = "input_not_found"
    input_too_large = "input_too_large"
    input_access_denied = "input_access_denied"
    invalid_uri = "invalid_uri"
    input_scheme_not_allowed = "input_scheme_not_allowed"  # http(s)://, file://…: never fetched
    input_not_allowed = "input_not_allowed"  # outside LLAVA_BATCH_INPUT_PREFIXES
    prompt_too_long = "prompt_too_long"
    too_many_images = "too_many_images"  # over MAX_IMAGES_PER_REQUEST: written failed at submit
    images_not_supported = "images_not_supported"  # several, to a model that takes one
    pdf_encrypted = "pdf_encrypted"
    pdf_corrupt = "pdf_corrupt"
    pdf_too_many_pages = "pdf_too_many_pages"
    pdf_page_out_of_range = "pdf_page_out_of_range"
    document_too_large = "document_too_large"
    output_truncated = "output_truncated"
    output_invalid = "output_invalid"
    schema_invalid = "schema_invalid"
    storage_unavailable = "storage_unavailable"
    out_of_memory = "out_of_memory"
    worker_lost = "worker_lost"
    batch_expired = "batch_expired"  # its job's completion window passed before it started
    storage_error = "storage_error"  # the store failed in a way storage cannot classify
    internal_error = "internal_error"


# The codes a failed item may fail without again: what went wrong was around the item (a
# worker that died, the store or the device under load, an input not there or not readable
# yet), not the item itself, so ``retry`` re-queues these by default (``--all``: every failed
# item). Every other code is the input's or the job's own and fails the same way again (a
# corrupt image, a prompt too long, an output over its token budget: greedy decoding repeats
# it). docs/errors.md marks the same codes, and a test holds the two together.
RETRYABLE_ERROR_CODES: frozenset[ItemErrorCode] = frozenset(
    {
        ItemErrorCode.input_not_found,
        ItemErrorCode.input_access_denied,
        ItemErrorCode.storage_unavailable,
        ItemErrorCode.storage_error,
        ItemErrorCode.out_of_memory,
        ItemErrorCode.worker_lost,
        ItemErrorCode.batch_expired,
        ItemErrorCode.internal_error,
    }
)


class JobsError(Exception):
    """Base: a refusal the caller should see as one line, with a stable code. Never a bug, so
    never ``internal_error``: raised as-is it means "refused; nothing was changed"."""

    code = "error"
    exit_code = ExitCode.invalid_request

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestError(JobsError):
    """Raised at submit when the request is invalid; nothing has been written."""

    code = "invalid_request"
    exit_code = ExitCode.invalid_request


class NotFoundError(JobsError):
    """Raised when a name or id the caller gave matches nothing."""

    code = "not_found"
    exit_code = ExitCode.not_found


class JobNotFoundError(NotFoundError):
    """Raised when a job id (or unique prefix) matches no job."""

    code = "job_not_found"


class JobNotFinishedError(JobsError):
    """Raised when a job that has not ended is asked to be deleted: nothing was deleted."""

    code = "job_not_finished"
    exit_code = ExitCode.job_not_finished


class ScheduleNotFoundError(NotFoundError):
    """Raised when a schedule name matches no schedule."""

    code = "schedule_not_found"


class SchemaMissingError(JobsError):
    """Raised when the database has no llava-batch tables yet."""

    code = "schema_missing"
    exit_code = ExitCode.schema_missing


class DatabaseUnavailableError(JobsError):
    """Raised when the database cannot be reached; transient, callers retry with backoff."""

    code = "database_unavailable"
    exit_code = ExitCode.database_unavailable


class WaitTimeoutError(JobsError):
    """Raised when ``--timeout`` passes before the job waited on has ended; the job goes on."""

    code = "wait_timeout"
    exit_code = ExitCode.wait_timeout
