"""``llava-batch serve`` refuses what would be unsafe or cannot work, in one line with a stable
code and exit 2, before it listens: another address than loopback without a token, a port
already taken (docs/review.md#security, docs/errors.md)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.cli.conftest import RunCli, assert_one_line_error


def test_binding_beyond_loopback_needs_a_token(run_cli: RunCli) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert_one_line_error(result, 2, "[serve_token_required]", "LLAVA_BATCH_SERVE_TOKEN")


def test_a_host_name_starting_with_127_is_not_loopback(run_cli: RunCli) -> None:
    """A name such as 127.0.0.1.nip.io resolves wherever its owner says: it needs the token."""
    result = run_cli("serve", "--host", "127.0.0.1.example.invalid", "--port", "0")
    assert_one_line_error(result, 2, "[serve_token_required]", "LLAVA_BATCH_SERVE_TOKEN")


def test_a_port_taken_is_refused_in_one_line(run_cli: RunCli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert_one_line_error(result, 2, "[serve_port_taken]", str(port))


def test_half_a_certificate_is_refused(run_cli: RunCli) -> None:
    result = run_cli("serve", "--port", "0", "--ssl-certfile", "cert.pem")
    assert_one_line_error(result, 2, "[invalid_option]", "--ssl-keyfile")


def test_a_certificate_that_cannot_be_loaded_is_refused_before_listening(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Checked before serve says where it serves: a missing file or one that holds no
    certificate is the user's option, not an internal error after "serving on https://…"."""
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate\n", encoding="utf-8")
    for cert in (str(tmp_path / "missing.pem"), str(not_pem)):
        result = run_cli(
            "serve", "--port", "0", "--ssl-certfile", cert, "--ssl-keyfile", cert, timeout=30
        )
        assert_one_line_error(result, 2, "[invalid_option]", "--ssl-certfile", cert)
        assert "serving on" not in result.stderr
