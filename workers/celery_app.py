"""The Celery app, built by a function from one ``Settings``; the settings here are the ones
that matter for GPU work (docs/design.md, "Dispatch, lease and sweeper").

Nothing reads settings at import. ``celery -A workers.celery_app inspect ping`` (an operator's
check) gets ``app``, built from the environment on first access. A worker's app also has its
tasks bound (``workers.tasks.build_worker``): ``llava-batch worker`` builds it from the settings
it was given and picks a CUDA-safe pool.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from celery import Celery

from jobs.dispatch import CELERY_CLIENT_CONF, SWEEP_TASK
from jobs.fleet import queue_for
from jobs.settings import Settings, load_settings

log = logging.getLogger(__name__)


def build_celery_app(settings: Settings) -> Celery:
    """The app's configuration, no tasks: what a client or ``inspect`` needs."""
    app = Celery("llava-batch", broker=settings.broker_url)
    app.conf.update(
        # Only JSON crosses the broker: a pickled message is refused, never executed. Sent
        # messages are announced (task-sent events) as a producer's are.
        CELERY_CLIENT_CONF,
        result_serializer="json",
        # Task events (received, started, succeeded, …) for Flower and celery events; the
        # worker's --no-events turns them off.
        worker_send_task_events=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in SQL
        # This worker's model's queue: it never takes another model's jobs.
        task_default_queue=queue_for(settings.queue, settings.model),
        broker_connection_retry_on_startup=True,
        # Redis redelivers unacked messages after this; the lease protects against the rerun.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": float(settings.sweep_interval_seconds)}
        },
    )
    return app


def warn_if_insecure(broker_url: str) -> None:
    parts = urlsplit(broker_url)
    local = parts.hostname in (None, "localhost", "127.0.0.1", "::1")
    if not local and not parts.password:
        log.warning(
            "the broker at %s has no password: anyone who reaches it can queue work",
            parts.hostname,
        )


_built: list[Celery] = []


def __getattr__(name: str) -> Celery:
    """``workers.celery_app.app``, for ``celery -A workers.celery_app inspect …``: built from
    the environment's settings when first asked for, never at import."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _built:
        _built.append(build_celery_app(load_settings()))
    return _built[0]
