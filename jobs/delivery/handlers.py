"""The handler of each kind of delivery, as this deployment's settings configure them."""

from __future__ import annotations

from jobs.db import SessionFactory
from jobs.delivery.outbox import Handler
from jobs.delivery.output import output_handler
from jobs.delivery.webhook import webhook_handler_for
from jobs.settings import Settings
from storage import Blobs


def handlers_for(
    session_factory: SessionFactory, blobs: Blobs, settings: Settings
) -> dict[str, Handler]:
    """``what`` → the function that sends one delivery of that kind."""
    handlers: dict[str, Handler] = {}
    handlers["output"] = output_handler(session_factory, blobs, settings.output_prefixes)
    handlers["webhook"] = webhook_handler_for(session_factory, settings)
    return handlers
