"""The review page's app: built by ``create_app`` from what the CLI opens (settings, database,
store), so the tests and the bench run the very app ``serve`` runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jobs.db import SessionFactory
from jobs.errors import JobsError, NotFoundError, RequestError
from jobs.settings import Settings
from jobs.web import pages, review_pages
from jobs.web.images import Budgets, ThumbnailCache
from jobs.web.security import Guard
from jobs.web.throttle import LoginThrottle
from storage import Blobs

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Deps:
    """What every route works with."""

    settings: Settings
    session_factory: SessionFactory
    blobs: Blobs
    reviewer: str
    token: str | None
    templates: Environment
    thumbnails: ThumbnailCache
    login_throttle: LoginThrottle

    @property
    def budgets(self) -> Budgets:
        return Budgets(
            max_input_bytes=self.settings.max_input_bytes,
            max_image_pixels=self.settings.max_image_pixels,
            max_item_pixels=self.settings.max_item_pixels,
        )


def create_app(
    settings: Settings,
    session_factory: SessionFactory,
    blobs: Blobs,
    *,
    reviewer: str,
    loopback_only: bool = True,
    login_throttle: LoginThrottle | None = None,
) -> Starlette:
    token = settings.serve_token.get_secret_value() or None
    deps = Deps(
        settings=settings,
        session_factory=session_factory,
        blobs=blobs,
        reviewer=reviewer,
        token=token,
        templates=_templates(),
        thumbnails=ThumbnailCache(settings.home / "thumbnails"),
        login_throttle=LoginThrottle() if login_throttle is None else login_throttle,
    )
    routes = [
        Route("/", pages.jobs_page),
        Route("/fleet", pages.fleet_page),
        Route("/login", pages.login_page, methods=["GET", "POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/jobs/{job_id}", review_pages.job_page),
        Route("/jobs/{job_id}/cancel", pages.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/retry", pages.retry, methods=["POST"]),
        Route("/jobs/{job_id}/decide", review_pages.decide_shown, methods=["POST"]),
        Route("/jobs/{job_id}/export", review_pages.export),
        Route("/items/{item_id}", review_pages.item_page),
        Route("/items/{item_id}/decide", review_pages.decide_one, methods=["POST"]),
        Route("/items/{item_id}/edit", review_pages.edit_one, methods=["POST"]),
        Route("/items/{item_id}/thumb", review_pages.thumbnail),
        Route("/items/{item_id}/image", review_pages.full_image),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token, loopback_only=loopback_only)],
        exception_handlers={JobsError: _refused, HTTPException: _http_error},
    )
    app.state.deps = deps
    return app


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("jobs.web", "templates"),
        # Every value is escaped unless a template says otherwise, and none does.
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    return env


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    value = int(value)
    if value < 120:
        return f"{value}s"
    if value < 7200:
        return f"{value // 60}m"
    if value < 2 * 86400:
        return f"{value // 3600}h {value % 3600 // 60}m"
    return f"{value // 86400}d"


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    deps: Deps = request.app.state.deps
    page = deps.templates.get_template(template).render(
        csrf=request.state.csrf,
        reviewer=deps.reviewer,
        path=request.url.path,
        # Without a token there is no session to end; on the login page none has begun.
        sign_out=deps.token is not None and request.url.path != "/login",
        **values,
    )
    return Response(page, status_code=status_code, media_type="text/html")


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobsError)
    status = (
        404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, RequestError) else 409
    )
    return render(request, "error.html", status, message=exc.message, code=exc.code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not hasattr(request.state, "csrf"):  # refused before the guard ran (a 404 of a route)
        request.state.csrf = ""
    return render(request, "error.html", exc.status_code, message=exc.detail, code=None)
