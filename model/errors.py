"""The one error tree of the ``model`` package.

Three kinds, as the design asks: engine-dead (``ModelLoadError``: the worker refuses to start),
per-batch recoverable (``DeviceOutOfMemoryError``: the caller splits the batch and tries again)
and per-item permanent (``InputError``: mark that item failed, keep going). Third-party errors
(Pillow, torch, transformers) are wrapped where they enter this package, so callers never need to
import torch to catch them.
"""

from __future__ import annotations

__all__ = [
    "INPUT_ERROR_CODES",
    "DeviceOutOfMemoryError",
    "InputError",
    "ModelError",
    "ModelLoadError",
    "SchemaError",
]


class ModelError(Exception):
    """Base of every error raised on purpose by the ``model`` package."""


class ModelLoadError(ModelError):
    """The checkpoint cannot be loaded, or is refused as unsafe.

    Raised for a missing/unreadable checkpoint, one that has only pickle weights (``.bin``/``.pt``)
    and no ``.safetensors``, or one whose config asks for remote code (``auto_map``). Engine-dead:
    the worker should refuse to start rather than fail every item.
    """


class DeviceOutOfMemoryError(ModelError):
    """Generation ran out of device memory for this batch.

    Wraps ``torch.OutOfMemoryError`` and the older "CUDA out of memory" ``RuntimeError``. The
    engine is still usable: callers retry with smaller batches.
    """


INPUT_ERROR_CODES = frozenset(
    {
        "empty_input",  # zero bytes
        "image_decode_error",  # corrupt or truncated image
        "image_too_large",  # over the pixel limit of one image or page, or out of memory
        "unsupported_format",  # not an image we read (text, SVG, HEIC, an unimplemented variant)
        "prompt_too_long",  # the prompt and image do not fit the model's context
        "pdf_encrypted",  # needs a password
        "pdf_corrupt",  # not parseable, no pages, a page PDFium cannot load or render
        "pdf_too_many_pages",  # more selected pages than allowed per document
        "pdf_page_out_of_range",  # none of the selected pages exists
        "document_too_large",  # the selected pages together are over the per-item pixel budget
        "images_not_supported",  # several images, to a model whose template takes one
    }
)


class InputError(ModelError):
    """One input item is unusable; permanent for that item only.

    ``code`` is one of ``INPUT_ERROR_CODES`` (a stable machine-readable code) and ``message``
    one human sentence; both are stored on the failed item. Decoding and rendering contain every
    exception their libraries raise: corrupt bytes become ``image_decode_error`` or
    ``pdf_corrupt``, a variant nobody implements ``unsupported_format``, and running out of
    memory on one input ``image_too_large`` (or ``document_too_large``), never "corrupt": every
    budget is checked before decoding, so such an input asks for more than its size says.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SchemaError(ModelError):
    """An extraction JSON Schema is invalid, outside the supported subset, or cannot be compiled.

    Raised by ``model.schema`` (at submit, before anything is written) and by an engine given
    such a schema. ``code`` is always ``schema_invalid``; ``message`` is one sentence naming the
    problem and where it is in the schema.
    """

    code = "schema_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
