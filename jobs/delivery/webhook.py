"""The ``webhook`` delivery: one signed POST of how a job ended (docs/webhooks.md).

The body is the event ``batch.completed`` (``failed``, ``cancelled``, ``expired``) with the
job as ``status --json`` shows it (counts, usage, metadata), read in one session by aggregate
queries. Its headers are the Standard Webhooks ones (``jobs.delivery.signing``): the
``webhook-id`` is the delivery's id, the same on every try, so a receiver drops a repeat.

Each try checks the URL again (``jobs.delivery.urls``) and connects to the very addresses it
checked. A redirect is never followed (it could lead anywhere the check would refuse): a 3xx
is a failed try like any other non-2xx answer. Every failure is tried again on the outbox's
schedule, as the specification says, except a URL the policy refuses and ``410 Gone``: the
receiver, or the deployment, said no for good.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobs.db import Job, SessionFactory
from jobs.delivery.outbox import Attempt, DeliveryTask, Handler
from jobs.delivery.signing import headers, webhook_key
from jobs.delivery.urls import Resolver, Target, UnresolvableHostError, UrlPolicy, check_url
from jobs.errors import RequestError
from jobs.queries import read_progress
from jobs.settings import Settings

WEBHOOK_SECRET_MISSING = "webhook_secret_missing"
EXCERPT_BYTES = 500  # of a receiver's answer, kept with the try
USER_AGENT = "llava-batch-webhooks"
# What status --json shows and a receiver has no use for: how fast it went while running.
_NOT_SENT = ("job_id", "items_per_second", "eta_seconds")


def webhook_handler_for(session_factory: SessionFactory, settings: Settings) -> Handler:
    """The handler as this deployment's settings configure it."""
    return webhook_handler(
        session_factory,
        secret=settings.webhook_secret,
        policy=policy_of(settings),
        timeout=settings.webhook_timeout_seconds,
    )


def notify_url_of(
    given: str | None, settings: Settings, *, resolver: Resolver | None = None
) -> str | None:
    """The webhook URL of a submit (``--notify``, else LLAVA_BATCH_NOTIFY_URL), checked as
    each delivery will check it again; None: none. Nothing is sent unsigned, so a URL without
    LLAVA_BATCH_WEBHOOK_SECRET is refused (``webhook_secret_missing``)."""
    url = given if given is not None else settings.notify_url
    if url is None or (given is None and not url.strip()):
        return None
    what = "--notify" if given is not None else "LLAVA_BATCH_NOTIFY_URL"
    check_url(url, policy_of(settings), what=what, **({"resolver": resolver} if resolver else {}))
    if settings.webhook_secret is None:
        raise RequestError(
            f"{what} needs LLAVA_BATCH_WEBHOOK_SECRET (whsec_…): webhooks are always signed "
            "(docs/webhooks.md).",
            code=WEBHOOK_SECRET_MISSING,
        )
    return url


def policy_of(settings: Settings) -> UrlPolicy:
    return UrlPolicy.of(settings.webhook_allow_http_hosts, settings.webhook_allow_networks)


def webhook_handler(
    session_factory: SessionFactory,
    *,
    secret: str | None,
    policy: UrlPolicy,
    timeout: float,
    resolver: Resolver | None = None,
    clock: Callable[[], float] = time.time,
    tls: ssl.SSLContext | None = None,
) -> Handler:
    """``resolver``, ``tls``: the system's own unless given (tests give theirs)."""
    key = None if secret is None else webhook_key(secret)
    resolving: dict[str, Resolver] = {} if resolver is None else {"resolver": resolver}

    def send(task: DeliveryTask) -> Attempt:
        if key is None:  # this sweeper lacks the secret; one that has it may deliver
            return Attempt(ok=False, detail="LLAVA_BATCH_WEBHOOK_SECRET is not set: not sent")
        try:
            target = check_url(task.target, policy, what="The webhook URL", **resolving)
        except UnresolvableHostError as exc:  # DNS may answer next time
            return Attempt(ok=False, detail=exc.message)
        except RequestError as exc:  # the policy refuses it: no later try will differ
            return Attempt(ok=False, detail=exc.message, retry=False)
        event = event_of(session_factory, task)
        if event is None:
            return Attempt(ok=False, detail="the job was deleted", retry=False)
        body = json.dumps(event, separators=(",", ":")).encode()
        signed = headers(key, task.id, int(clock()), body)
        return post(target, body, signed, timeout=timeout, tls=tls)

    return send


def event_of(session_factory: SessionFactory, task: DeliveryTask) -> dict[str, Any] | None:
    """What is POSTed: the event of the job's end and the job then (None: the job is gone)."""
    with session_factory() as session:
        job = session.get(Job, task.job_id)
        if job is None:
            return None
        shown = read_progress(session, job, usage=True, turn=False).as_dict()
    data = {"id": task.job_id, **{k: v for k, v in shown.items() if k not in _NOT_SENT}}
    data["status"] = task.job_status  # how it ended, whatever a retry made of it since
    return {"type": f"batch.{task.job_status}", "timestamp": _iso(task.created_at), "data": data}


def post(
    target: Target,
    body: bytes,
    signed: dict[str, str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """One POST to the first of the checked addresses that accepts a connection. Once one has,
    its failure ends the try: the next address would be a second copy, not a fallback."""
    request_headers = {
        **signed,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    problem = "no address"
    for address in target.addresses:
        cut_off = _CutOff(timeout)
        connection = _connection(target, address, timeout, tls, cut_off.watch)
        try:
            with cut_off:
                try:
                    connection.connect()
                except OSError as exc:
                    problem = _failure(address, exc, timeout, cut_off.fired)
                    continue
                connection.request("POST", target.path, body=body, headers=request_headers)
                response = connection.getresponse()
                if cut_off.fired:  # its head broken off (an end of file ends the headers)
                    return Attempt(ok=False, detail=_failure(address, None, timeout, True))
                location = _printable(response.getheader("location") or "")
                try:
                    excerpt = _printable(response.read(EXCERPT_BYTES).decode("utf-8", "replace"))
                except (OSError, http.client.HTTPException):
                    excerpt = ""  # it answered; its words came too slowly, or broken off
                return _answered(response.status, location, excerpt)
        except (OSError, http.client.HTTPException) as exc:
            return Attempt(ok=False, detail=_failure(address, exc, timeout, cut_off.fired))
        finally:
            connection.close()
    return Attempt(ok=False, detail=problem)


class _CutOff:
    """Shuts a connection down once its exchange has taken ``seconds`` in all. A socket's
    timeout bounds each wait for a byte, not the whole: a receiver (whoever submits names it)
    answering a byte at a time would hold the sweeper, and every delivery and sweep behind it,
    for hours, past the delivery's lease, and be sent a second copy meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        """The connection's socket, once made. A duplicate of its descriptor is kept (TLS takes
        the object over, and a handshake that fails closes it): only this class closes that
        one, so a shutdown can never reach another socket given the same number since."""
        with self._lock:
            if self.fired:
                sock.close()
                raise TimeoutError("timed out")
            self._fd = os.dup(sock.fileno())

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._fd is None:
                return
            # A socket object over the same descriptor, detached again: only the shutdown
            # is done through it (the reader's blocked recv then returns).
            view = socket.socket(fileno=self._fd)
            try:
                view.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                view.detach()

    def __enter__(self) -> _CutOff:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None


def _failure(address: str, exc: BaseException | None, timeout: float, cut_off: bool = False) -> str:
    if cut_off or isinstance(exc, TimeoutError):
        return f"{address}: no answer within {timeout:g}s"
    return f"{address}: {type(exc).__name__}: {exc}".strip().rstrip(":")


def _printable(text: str) -> str:
    """A receiver's words as they may be shown on a terminal: no control characters (an
    escape sequence in an answer must not reach ``notifications``' reader as one)."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _answered(status: int, location: str, excerpt: str) -> Attempt:
    detail = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if 200 <= status < 300:
        return Attempt(ok=True, status_code=status, detail=detail)
    if 300 <= status < 400:
        detail = f"HTTP {status}: a redirect (to {location or 'nowhere'}) is not followed"
    return Attempt(ok=False, status_code=status, detail=detail, retry=status != 410)


def _connection(
    target: Target,
    address: str,
    timeout: float,
    tls: ssl.SSLContext | None,
    made: Callable[[socket.socket], None],
) -> http.client.HTTPConnection:
    """A connection to ``address`` that speaks to ``target.host``: TLS is verified for the
    host name, and no second lookup can take it elsewhere."""
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=tls or ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    def pinned(_where: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        sock = socket.create_connection((address, target.port), timeout, source_address)
        made(sock)
        return sock

    connection._create_connection = pinned  # type: ignore[attr-defined]
    return connection


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
