"""``llava-batch serve``: the review web page (docs/review.md). The web stack (Starlette,
Jinja2, uvicorn) is imported in the command's body: the CLI starts without it."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs.cli import views
from jobs.errors import RequestError


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Loopback by default; any other needs "
            "LLAVA_BATCH_SERVE_TOKEN, and https (--ssl-certfile, or a proxy in front).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any).")] = 8000,
    reviewer: Annotated[
        str | None,
        typer.Option(
            "--reviewer",
            help="The name decisions and edits are recorded under (default: this OS user).",
        ),
    ] = None,
    ssl_certfile: Annotated[
        str | None, typer.Option("--ssl-certfile", help="Serve https with this certificate.")
    ] = None,
    ssl_keyfile: Annotated[
        str | None, typer.Option("--ssl-keyfile", help="The certificate's private key.")
    ] = None,
) -> None:
    """Serve the review web page: jobs, items beside their pictures, review by keyboard, the
    fleet."""
    import getpass
    import socket

    from jobs.cli.context import open_context
    from jobs.web.security import is_loopback

    ctx = open_context()
    loopback = is_loopback(host)
    if not loopback and not ctx.settings.serve_token.get_secret_value():
        raise RequestError(
            f"--host {host} is not loopback: set LLAVA_BATCH_SERVE_TOKEN first (the page asks "
            "for it once), or serve on 127.0.0.1.",
            code="serve_token_required",
        )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise RequestError("--ssl-certfile and --ssl-keyfile go together.", code="invalid_option")
    if ssl_certfile is not None:
        _check_certificate(ssl_certfile, ssl_keyfile)
    name = reviewer or getpass.getuser()
    if not name.strip() or len(name) > 200:
        raise RequestError("--reviewer is a name of 1 to 200 characters.", code="invalid_option")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise RequestError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}).", code="serve_port_taken"
        ) from None
    import uvicorn

    from jobs.web.app import create_app

    app = create_app(
        ctx.settings, ctx.session_factory, ctx.blobs, reviewer=name, loopback_only=loopback
    )
    bound = listener.getsockname()[1]
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    views.err.print(f"serving on {scheme}://{shown}:{bound}/ as reviewer {name}", markup=False)
    config = uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


def _check_certificate(certfile: str, keyfile: str | None) -> None:
    """Loads the pair as uvicorn will, before anything is said or bound: uvicorn loads it only
    once serving has begun, where a missing or wrong file was an internal error."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except OSError as exc:  # ssl.SSLError too
        reason = exc.strerror or getattr(exc, "reason", None) or exc
        raise RequestError(
            f"--ssl-certfile {certfile} with --ssl-keyfile {keyfile} cannot be loaded ({reason}).",
            code="invalid_option",
        ) from None
