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


# Each item error code in words, for a person reading a failure (the review page): what went
# wrong with this item, in one plain sentence. docs/errors.md has the full story per code; a
# test holds this table to ``ItemErrorCode``.
ITEM_ERROR_WORDS: dict[ItemErrorCode, str] = {
    ItemErrorCode.empty_input: "The input file is empty.",
    ItemErrorCode.image_decode_error: "The image is corrupt or truncated.",
    ItemErrorCode.image_too_large: "The image has more pixels than allowed.",
    ItemErrorCode.unsupported_format: "The input is not an image format that can be read.",
    ItemErrorCode.input_not_found: "The input does not exist (any more).",
    ItemErrorCode.input_too_large: "The input file is larger than allowed.",
    ItemErrorCode.input_access_denied: "The store refused access to the input.",
    ItemErrorCode.invalid_uri: "The input's address is malformed.",
    ItemErrorCode.input_scheme_not_allowed: "The image is a URL, and inputs are never fetched "
    "from the network.",
    ItemErrorCode.input_not_allowed: "The input lies outside the allowed input prefixes.",
    ItemErrorCode.prompt_too_long: "The prompt does not fit the model's context.",
    ItemErrorCode.too_many_images: "The request has more images than allowed.",
    ItemErrorCode.images_not_supported: "The model takes one image per request, and this "
    "request has several.",
    ItemErrorCode.pdf_encrypted: "The PDF needs a password.",
    ItemErrorCode.pdf_corrupt: "The PDF cannot be read.",
    ItemErrorCode.pdf_too_many_pages: "The PDF has more selected pages than allowed.",
    ItemErrorCode.pdf_page_out_of_range: "None of the selected pages exists in the PDF.",
    ItemErrorCode.document_too_large: "The selected pages together are too large to render.",
    ItemErrorCode.output_truncated: "The output ran out of tokens before its JSON was closed.",
    ItemErrorCode.output_invalid: "The output does not match the schema.",
    ItemErrorCode.schema_invalid: "The job's schema could not be compiled.",
    ItemErrorCode.storage_unavailable: "The store kept failing through every retry.",
    ItemErrorCode.out_of_memory: "The model ran out of device memory on this item.",
    ItemErrorCode.worker_lost: "The worker died while processing this item, every time.",
    ItemErrorCode.batch_expired: "The job's completion window passed before this item started.",
    ItemErrorCode.storage_error: "The store failed reading the input.",
    ItemErrorCode.internal_error: "Something unexpected went wrong processing this item.",
}


def error_words(code: str | None) -> str | None:
    """An item error code in words (None: no code); a code this version does not know (a
    newer worker's) reads as itself."""
    if code is None:
        return None
    try:
        return ITEM_ERROR_WORDS[ItemErrorCode(code)]
    except ValueError:
        return code


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


class ReviewJobNotFoundError(JobNotFoundError, RequestError):
    """A review names a job that does not exist: a ``JobNotFoundError`` (exit 3) that a
    caller handling review refusals as ``RequestError`` catches too."""

    code = "job_not_found"
    exit_code = ExitCode.not_found


class ItemNotFoundError(NotFoundError, RequestError):
    """A review names an item that does not exist (or whose job is being deleted)."""

    code = "item_not_found"
    exit_code = ExitCode.not_found


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
