from __future__ import annotations

import logging

import pytest

from jobs.settings import Settings
from workers.celery_app import build_celery_app, warn_if_insecure


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("redis://redis.internal:6379/0", True),
        ("redis://:s3cret@redis.internal:6379/0", False),
        ("redis://127.0.0.1:6379/0", False),
        ("redis://localhost:6379/0", False),
    ],
)
def test_broker_without_password_outside_localhost_warns(
    url: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_if_insecure(url)
    assert ("has no password" in caplog.text) is warned
    assert "s3cret" not in caplog.text


def test_celery_configuration_keeps_the_broker_a_doorbell() -> None:
    conf = build_celery_app(Settings(broker_url="redis://x:6379/0")).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_ignore_result
    assert conf.broker_transport_options["visibility_timeout"] == 43_200
