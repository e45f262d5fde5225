"""``llava-batch serve`` refuses what would be unsafe or cannot work, in one line with a stable
code and exit 2, before it listens: another address than loopback without a token, a port
already taken, a host that is neither an address nor a name (docs/review.md#security,
docs/errors.md); and it serves on IPv6 loopback, written bare or in brackets."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.cli.conftest import CLI, RunCli, assert_one_line_error


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


def _can_bind_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["[::1]", "::1"])
def test_serves_on_ipv6_loopback_written_bare_or_in_brackets(
    cli_env: dict[str, str], host: str
) -> None:
    """``[::1]`` as in a URL was bound as a name, and refused as a port taken."""
    if not _can_bind_ipv6_loopback():
        pytest.skip("this machine cannot bind ::1 (no IPv6 loopback in its OS or network stack)")
    process = subprocess.Popen(
        [CLI, "serve", "--host", host, "--port", "0"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        said = ""
        for line in process.stderr:  # ends when serve does, so an early exit is no hang
            said += line
            if "serving on" in line:
                break
        served = re.search(r"serving on (http://\[::1\]:\d+/) ", said)
        assert served, said
        assert _answers(served.group(1) + "fleet", process) == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str, process: subprocess.Popen[str]) -> int:
    """The status of ``url`` once serve answers: it says where it serves when bound, a moment
    before uvicorn listens."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("host", ["[127.0.0.1]", "[localhost]", "[::1", "bad host", "127.0.0.256"])
def test_a_host_neither_address_nor_name_is_refused(run_cli: RunCli, host: str) -> None:
    result = run_cli("serve", "--host", host, "--port", "0")
    assert_one_line_error(result, 2, "[invalid_option]", "--host")
