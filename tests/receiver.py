"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread that checks each
POST's signature with the snippet docs/webhooks.md gives receivers, and answers as told."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
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
    reply: str | None = None  # the body of every answer (default: "answer N: CODE")

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def receiver(
    *answers: int,
    redirect: str | None = None,
    tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Receiver]:
    """``tls``: serve https with this server context; ``host``: the loopback address to serve
    on."""
    state = Receiver(list(answers), redirect)
    verify = documented_verify()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.received.append(Received(self.path, headers, body, verify(SECRET, headers, body)))
            code = state.answers.pop(0) if state.answers else 200
            reply = (state.reply or f"answer {len(state.received)}: {code}").encode()
            self.send_response(code)
            if state.redirect is not None:
                self.send_header("location", state.redirect)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def tls_contexts(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` from a test CA, and a client context
    that trusts that CA (and verifies host names, as the default one does)."""
    from datetime import datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        named = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(named)
            .issuer_name(issuer or named)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("llava-batch test CA", ca_key, None, ca_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue(name, leaf_key, ca.subject, ca_key, False)
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return server, client
