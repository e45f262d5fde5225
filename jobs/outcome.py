"""What came of a piece of work: one type from a generation, through a document's pages, to the
item's row in the database.

A generation gives text and whether it finished; a kind turns that into an item's outcome (a
caption, a validated object, a list of answers), a document item carries one outcome per page;
``ItemOutcome`` addresses an outcome to the claimed item it is recorded for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.geometry import Frame

__all__ = ["ItemOutcome", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """No error code means success. ``finished`` is False when generation stopped at
    ``max_new_tokens``; ``page`` is set on a document's page outcomes, ``pages`` on the
    document item's outcome."""

    text: str | None = None
    json: Any = None
    tokens_out: int | None = None  # completion tokens
    tokens_in: int | None = None  # prompt tokens (text and image) the model read
    error_code: str | None = None
    error_message: str | None = None
    finished: bool = True
    page: int | None = None
    pages: tuple[Outcome, ...] = ()
    # A generation's image: where the processor put it on the canvas the model saw, and the
    # image's own size (upright, before any reduced-scale decoding), for a kind that maps
    # what the model wrote about places back to the image (``model.geometry``).
    frame: Frame | None = None
    source_size: tuple[int, int] | None = None

    @property
    def failed(self) -> bool:
        return self.error_code is not None


@dataclass(frozen=True)
class ItemOutcome:
    """An outcome for one claimed item, recorded only under its lease token."""

    item_id: str
    lease_token: str
    outcome: Outcome
