"""Pytest plugin: a real S3 endpoint (moto in server mode) for integration tests.

A real HTTP server rather than in-process ``mock_aws`` patching, so subprocesses (real Celery
workers) reach the same S3 through the environment they inherit.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# boto3's own configuration chain is the only way our code finds S3, so the fixture speaks it.
_S3_ENV = {
    "AWS_ENDPOINT_URL_S3": "",  # filled in with the server's address
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Removed for the session so a developer's real credentials or profile can never be used.
_S3_ENV_REMOVED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1 (free port), exported via AWS_* vars."""
    from moto.server import ThreadedMotoServer

    # One access-log line per request would bury the output of any failing test.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in (*_S3_ENV, *_S3_ENV_REMOVED)}
    os.environ.update({**_S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
    for name in _S3_ENV_REMOVED:
        os.environ.pop(name, None)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_server: str) -> S3Client:
    """An S3 client built by our own factory, so the environment wiring is exercised too."""
    from storage import build_s3_client

    return build_s3_client()


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> str:
    """A fresh, empty bucket on the moto server, unique to this test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return name
