"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread that checks each
POST's signature with the snippet docs/webhooks.md gives receivers, and answers as told."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes once decoded

_DOCS = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


def documented_verify() -> Callable[..., bool]:
    """``verify`` as docs/webhooks.md writes it: the test runs what a receiver would copy."""
    (block,) = re.findall(r"```python\n(.*?)```", _DOCS.read_text(encoding="utf-8"), re.S)
    scope: dict[str, Any] = {}
    exec(compile(block, str(_DOCS), "exec"), scope)
    return scope["verify"]  # type: ignore[no-any-return]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """Answers ``answers`` in turn (then 200); ``redirect``: the Location of a 3xx answer."""

    answers: list[int] = field(default_factory=list)
    redirect: str | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def receiver(*answers: int, redirect: str | None = None) -> Iterator[Receiver]:
    state = Receiver(list(answers), redirect)
    verify = documented_verify()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.received.append(Received(self.path, headers, body, verify(SECRET, headers, body)))
            code = state.answers.pop(0) if state.answers else 200
            reply = f"answer {len(state.received)}: {code}".encode()
            self.send_response(code)
            if state.redirect is not None:
                self.send_header("location", state.redirect)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
