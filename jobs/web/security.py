"""What keeps the review page safe by default (docs/review.md#security).

- **Who**: with a token (``LLAVA_BATCH_SERVE_TOKEN``), every page but the login page wants the
  session cookie the login page sets once the token is given: ``HttpOnly``, ``Secure``,
  ``SameSite=Strict``, holding an HMAC of the token (never the token itself).
  Signing out (a POST, so a page of another site cannot do it) expires that cookie; wrong
  tokens are throttled per address (``jobs.web.throttle``).
- **Forged requests**: every state-changing request (POST) carries the per-browser CSRF token
  (a form field or the ``X-CSRF-Token`` header) equal to its CSRF cookie, and an ``Origin`` (or,
  lacking one, a ``Referer``) of this very site.
- **DNS rebinding**: served on loopback, only loopback host names are answered.
- **What the browser may run**: a Content-Security-Policy allowing only our own script and style
  files (no inline script, no plugin, no frame), ``nosniff``, no framing, no referrer abroad.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp

SESSION_COOKIE = "llava_batch_session"
CSRF_COOKIE = "llava_batch_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 30 * 86400

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
# What needs no session: the login page, and the files it uses.
OPEN_PATHS = ("/login", "/static/")


def is_loopback(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or ``localhost``; never a name that merely starts
    like one: ``127.0.0.1.nip.io`` resolves wherever its owner says, and a rebinding page under
    such a name would otherwise be answered as this site."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """What the session cookie holds: an HMAC of the token, so the cookie never is the token,
    and a new token ends every session."""
    return hmac.new(token.encode(), b"llava-batch serve session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None) -> None:
    # Secure: browsers keep a Secure cookie over http only from loopback (a potentially
    # trustworthy origin); anywhere else the page must be served over https (docs/review.md).
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def clear_cookie(response: Response, name: str) -> None:
    # A browser replaces (here: expires) a cookie only when name, path and domain match, and
    # some refuse to touch a Secure cookie from a response that is not Secure: hence
    # set_cookie's very attributes.
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


class Guard(BaseHTTPMiddleware):
    """The session check, the CSRF cookie and the security headers of every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool) -> None:
        super().__init__(app)
        self.token = token
        self.loopback_only = loopback_only

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.loopback_only and not is_loopback(request.url.hostname or ""):
            return _headers(Response("This server answers loopback host names only.", 421))
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        fresh = not csrf
        if fresh:
            csrf = secrets.token_urlsafe(32)
        request.state.csrf = csrf
        if self.token and not self._signed_in(request):
            if request.method == "GET":
                response: Response = RedirectResponse("/login", status_code=303)
            else:
                response = Response("Sign in first: the page wants its token.", status_code=401)
        else:
            response = await call_next(request)
        if fresh:
            set_cookie(response, CSRF_COOKIE, csrf, max_age=None)
        return _headers(response)

    def _signed_in(self, request: Request) -> bool:
        if request.url.path.startswith(OPEN_PATHS):
            return True
        assert self.token is not None
        given = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(given.encode(), session_value(self.token).encode())


def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def check_csrf(request: Request) -> None:
    """Refuses (403) a state-changing request not from this site's own page."""
    if not _same_origin(request.headers, request):
        raise HTTPException(403, "Refused: the request did not come from this site's page.")
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "Refused: the form is stale or forged (reload the page).")


def _same_origin(headers: Headers, request: Request) -> bool:
    claimed = headers.get("origin") or headers.get("referer")
    if not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.url.netloc)
