"""Transient failures over real HTTP: a tiny server that always answers 503 SlowDown, and a
port nobody listens on. Clients here retry at most once, to keep the tests fast."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from storage import S3Store, TransientStorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


class _SlowDownHandler(BaseHTTPRequestHandler):
    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_SLOW_DOWN)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_SLOW_DOWN)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def slow_down_endpoint() -> Iterator[str]:
    _SlowDownHandler.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDownHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _client(endpoint: str, attempts: int = 2) -> S3Client:
    import boto3.session
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=2
        ),
    )


def test_slow_down_is_transient(slow_down_endpoint: str) -> None:
    store = S3Store(_client(slow_down_endpoint), "bucket")
    with pytest.raises(TransientStorageError) as info:
        store.read_bytes("k.jpg")
    assert info.value.code == "storage_unavailable"
    assert "SlowDown" in str(info.value)
    assert _SlowDownHandler.requests == 2  # boto3 retried once before giving up
    # Writes and listings fail the same way; no retries here, throttling backoff is slow.
    no_retry = S3Store(_client(slow_down_endpoint, attempts=1), "bucket")
    with pytest.raises(TransientStorageError):
        no_retry.write_bytes("k.jpg", b"x")
    with pytest.raises(TransientStorageError):
        list(no_retry.list_objects())


def test_unreachable_endpoint_is_transient() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(_client(f"http://127.0.0.1:{port}"), "bucket")
    with pytest.raises(TransientStorageError):
        store.read_bytes("k.jpg")
