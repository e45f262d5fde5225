"""``llava-batch serve``: the review web page (docs/review.md). The web stack (Starlette,
Jinja2, uvicorn) is imported in the command's body: the CLI starts without it."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

import typer

from jobs.cli import views
from jobs.errors import RequestError


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address or host name to listen on (an IPv6 address bare or in brackets: ::1, "
            "[::1]). Loopback by default; any other needs LLAVA_BATCH_SERVE_TOKEN, and https "
            "(--ssl-certfile, or a proxy in front).",
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

    host = listen_host(host)
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


# A host name's labels: letters, digits, hyphens inside, and underscores, which some private
# names (container names among them) carry; dot-separated, with an optional final dot.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def listen_host(given: str) -> str:
    """``--host`` as the socket takes it. Users write an IPv6 address in brackets as in a URL
    (``[::1]``), which no socket call accepts; brackets hold an IPv6 address only. Anything but
    an address or a host name is refused here: bound, it failed as a port taken."""
    bracketed = given.startswith("[") and given.endswith("]")
    bare = given[1:-1] if bracketed else given
    address = _address(bare)
    if address is not None and (address.version == 6 or not bracketed):
        return bare
    # A last label all digits is a mistyped address (127.0.0.256), never a name.
    last = bare.rstrip(".").rsplit(".", 1)[-1]
    if not bracketed and len(bare) <= 253 and _HOST_NAME.fullmatch(bare) and not last.isdigit():
        return bare
    raise RequestError(
        f"--host {given!r} is neither an address (127.0.0.1, ::1 or [::1]) nor a host name.",
        code="invalid_option",
    )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


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
