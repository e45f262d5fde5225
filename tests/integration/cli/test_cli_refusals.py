"""Hostile requests through the real CLI: exit 2, one line ``error: <sentence> [<code>]``, and
nothing written (no job, item or schedule rows, no stored blobs)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import INVOICE_SCHEMA, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def _rows(home: Path, table: str) -> int:
    engine = create_engine(f"sqlite:///{home / 'llava-batch.sqlite3'}")
    with engine.connect() as conn:
        return int(conn.execute(text(f"select count(*) from {table}")).scalar_one())


def _blobs(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def _manifest(path: Path, *lines: str) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _self_including(d: Path) -> list[str]:
    _manifest(d / "b.jsonl", '{"input": "a.jsonl"}')
    return [_manifest(d / "a.jsonl", '{"input": "img000.png"}', '{"input": "b.jsonl"}')]


def _not_utf8_name(d: Path) -> list[str]:
    with open(os.fsencode(d) + b"/caf\xe9.png", "wb") as f:
        f.write((d / "img000.png").read_bytes())
    return [str(d)]


def _sparse(d: Path) -> list[str]:
    with open(d / "huge.png", "wb") as f:
        f.truncate(300 * 1024 * 1024)  # over the default 256 MiB, and never read
    return [str(d)]


def _zero(d: Path) -> list[str]:
    (d / "zero.png").write_bytes(b"")
    return [str(d)]


Build = Callable[[Path], list[str]]
CASES: list[tuple[str, Build, list[str], dict[str, str], str]] = [
    ("manifest-loop", _self_including, [], {}, "manifest_invalid"),
    ("not-utf8-name", _not_utf8_name, [], {}, "invalid_source"),
    ("long-name", lambda d: [str(d)], ["--name", "n" * 201], {}, "invalid_name"),
    (
        "long-key",
        lambda d: [str(d)],
        ["--idempotency-key", "k" * 201],
        {},
        "invalid_idempotency_key",
    ),
    (
        "long-id",
        lambda d: [_manifest(d / "m.jsonl", json.dumps({"input": "img000.png", "id": "x" * 501}))],
        [],
        {},
        "invalid_custom_id",
    ),
    # An undecodable byte in an argument reaches Python as a lone surrogate.
    ("prompt-surrogate", lambda d: [str(d)], ["--prompt", "Say \udcff."], {}, "invalid_prompt"),
    ("batch-size", lambda d: [str(d)], ["--batch-size", "100000"], {}, "invalid_option"),
    ("max-new", lambda d: [str(d)], ["--max-new-tokens", "100000000"], {}, "invalid_option"),
    (
        "etc-passwd",
        lambda d: [_manifest(d / "m.jsonl", '{"input": "img000.png"}', '{"input": "/etc/passwd"}')],
        [],
        {},
        "manifest_escape",
    ),
    (
        "empty-entry",
        lambda d: [_manifest(d / "m.jsonl", '{"input": "img000.png"}', '{"input": ""}')],
        [],
        {},
        "manifest_invalid",
    ),
]


@pytest.mark.parametrize(
    ("build", "options", "env", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_submits_are_refused_and_write_nothing(
    run_cli: RunCli,
    tmp_path: Path,
    build: Build,
    options: list[str],
    env: dict[str, str],
    code: str,
) -> None:
    folder = tmp_path / "catalogue"
    write_images(folder, 2)
    result = run_cli("submit", "caption", *build(folder), *options, **env)
    assert_one_line_error(result, 2, f"[{code}]")
    assert result.stderr.rstrip().endswith(f"[{code}]")
    home = tmp_path / "home"
    assert _rows(home, "jobs") == 0 and _rows(home, "items") == 0
    assert _blobs(home) == []


def test_an_empty_or_oversized_file_is_no_refusal_it_fails_its_own_item(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """docs/design.md#I6 through the real CLI: ``submit caption photos/`` with a zero-byte file
    and one over the limit (sparse, never read) among good ones exits 0; those two items are
    failed from the start with their codes, the good ones are queued, and only they are
    stored."""
    folder = tmp_path / "catalogue"
    write_images(folder, 2)
    _zero(folder)
    _sparse(folder)
    result = run_cli("submit", "caption", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["items"], shown["failed"], shown["dispatched"]) == (4, 2, False)
    status = json.loads(run_cli("status", shown["job_id"], "--json").stdout)
    assert status["counts"]["failed"] == 2 and status["counts"]["queued"] == 2
    home = tmp_path / "home"
    assert _rows(home, "items") == 4 and len(_blobs(home)) == 2
    text_out = run_cli("submit", "caption", str(folder))
    assert text_out.returncode == 0
    assert "2 of them failed at once" in " ".join(text_out.stderr.split())


@pytest.mark.parametrize(
    "timing",
    [
        ["--cron", "0 0 31 2 *"],
        ["--cron", "* * * * * *"],
        ["--every", "30000d"],
        ["--every", "99999999999999d"],
    ],
    ids=["never", "six-fields", "30000d", "overflow"],
)
def test_schedules_that_never_fire_or_run_away_are_refused(
    run_cli: RunCli, tmp_path: Path, timing: list[str]
) -> None:
    schema = tmp_path / "invoice.schema.json"
    schema.write_text(json.dumps(INVOICE_SCHEMA))
    args = ["schedule", "add", "inbox", "--source", "s3://bucket/in/", "--schema", str(schema)]
    result = run_cli(*args, *timing)
    assert_one_line_error(result, 2, "[invalid_schedule]")
    assert _rows(tmp_path / "home", "schedules") == 0


def test_a_job_id_prefix_is_matched_literally(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    submitted = run_cli("submit", "caption", str(tmp_path / "c"), "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    for wildcard in ("%%%%", "____"):
        assert_one_line_error(run_cli("cancel", wildcard), 3, "[job_not_found]")
    status = json.loads(run_cli("status", job_id[:8], "--json").stdout)
    assert status["status"] == "queued"  # not cancelled
