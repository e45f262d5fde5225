"""Requests built to break the code that reads them, through the real CLI: each is refused with
exit 2 and one line ``error: <sentence> [<code>]`` (never an internal error), and nothing is
written. Also: user text is printed as typed, never read as rich markup or emoji codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error

DEEP = 100_000  # levels of nested arrays: far past any recursion limit


def _rows(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"select count(*) from {table}")).scalar_one())
    finally:
        engine.dispose()


def _nothing_written(home: Path, url: str | None = None) -> None:
    """No job or item rows (a request refused before the database was opened has none), and no
    stored input."""
    database = home / "llava-batch.sqlite3"
    if url is not None or database.exists():
        url = url or f"sqlite:///{database}"
        assert _rows(url, "jobs") == 0 and _rows(url, "items") == 0
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []


def _manifest_chain(d: Path) -> list[str]:
    """m0.jsonl names m1.jsonl, which names m2.jsonl, … 3,000 deep, the last an image."""
    for i in range(3000):
        (d / f"m{i}.jsonl").write_text(json.dumps({"input": f"m{i + 1}.jsonl"}) + "\n")
    (d / "m3000.jsonl").write_text(json.dumps({"input": "img000.png"}) + "\n")
    return ["caption", str(d / "m0.jsonl")]


def _nested_manifest_line(d: Path) -> list[str]:
    good = json.dumps({"input": "img000.png"})
    (d / "m.jsonl").write_text(f"{good}\n{'[' * DEEP}{']' * DEEP}\n")
    return ["caption", str(d / "m.jsonl")]


def _nested_openai_line(d: Path) -> list[str]:
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "tiny-llava",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "img000.png"}},
                    ],
                }
            ],
        },
    }
    # The first line makes it an OpenAI-Batch file; the second is read as one of its requests.
    (d / "batch.jsonl").write_text(f"{json.dumps(good)}\n{'[' * DEEP}{']' * DEEP}\n")
    return ["batch", str(d / "batch.jsonl")]


def _schema(d: Path, schema: str) -> list[str]:
    (d / "s.json").write_text(schema)
    return ["extract", str(d / "img000.png"), "--schema", str(d / "s.json")]


def _deep_schema(d: Path) -> list[str]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(120):
        node = {"type": "object", "properties": {"a": node}}
    return _schema(d, json.dumps(node))


def _ref_chain(d: Path) -> list[str]:
    defs: dict[str, Any] = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(900)}
    defs["d900"] = {"type": "string"}
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": defs}
    return _schema(d, json.dumps(schema))


Build = Callable[[Path], list[str]]
CASES: list[tuple[str, Build, str]] = [
    ("manifest-chain", _manifest_chain, "manifest_invalid"),
    ("nested-manifest-line", _nested_manifest_line, "manifest_invalid"),
    ("nested-openai-line", _nested_openai_line, "manifest_invalid"),
    ("schema-120-deep", _deep_schema, "schema_invalid"),
    ("schema-ref-chain", _ref_chain, "schema_invalid"),
    ("schema-file-nested", lambda d: _schema(d, "[" * DEEP + "]" * DEEP), "schema_invalid"),
    # An undecodable byte in an argument reaches Python as a lone surrogate.
    ("model-not-utf8", lambda d: ["caption", str(d), "--model", "caf\udce9"], "invalid_option"),
    ("model-too-long", lambda d: ["caption", str(d), "--model", "m" * 600], "invalid_option"),
]


@pytest.mark.parametrize(("build", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_requests_are_refused_in_one_line(
    run_cli: RunCli, tmp_path: Path, build: Build, code: str
) -> None:
    folder = tmp_path / "in"
    write_images(folder, 1)
    result = run_cli("submit", *build(folder))
    assert_one_line_error(result, 2, f"[{code}]")
    assert "internal error" not in result.stderr
    _nothing_written(tmp_path / "home")


def test_a_model_name_too_long_for_postgresql_is_refused_before_anything_is_stored(
    run_cli: RunCli, tmp_path: Path, pg_url: str
) -> None:
    env = {"LLAVA_BATCH_DATABASE_URL": pg_url}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    write_images(tmp_path / "in", 1)
    result = run_cli("submit", "caption", str(tmp_path / "in"), "--model", "m" * 600, env=env)
    assert_one_line_error(result, 2, "[invalid_option]", "--model", "500")
    _nothing_written(tmp_path / "home", pg_url)
    # The setting is checked the same way, naming itself.
    result = run_cli("run", "caption", str(tmp_path / "in"), env=env, LLAVA_BATCH_MODEL="m" * 600)
    assert_one_line_error(result, 2, "[invalid_option]", "LLAVA_BATCH_MODEL")
    _nothing_written(tmp_path / "home", pg_url)


def test_file_names_are_printed_as_typed_never_as_emoji(run_cli: RunCli, tmp_path: Path) -> None:
    missing = str(tmp_path / "photo:x::smile:.png")
    result = run_cli("submit", "caption", missing)
    assert_one_line_error(result, 2, "[source_not_found]", "photo:x::smile:.png")
    assert "\u274c" not in result.stderr


def test_job_names_with_markup_are_shown_as_typed(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    name = "[/bold] [red]sale:x:"
    submitted = run_cli("submit", "caption", str(tmp_path / "in"), "--name", name, "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    status = run_cli("status", job_id)
    assert status.returncode == 0, status.stderr
    assert name in status.stdout
    listed = run_cli("jobs", COLUMNS="200")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
