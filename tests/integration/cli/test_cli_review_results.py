"""``results`` and the reviews (issue 23) through the real CLI, on SQLite and PostgreSQL: the
review columns in jsonl and csv, ``--reviewed``, and ``--format openai --use-edits``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from jobs.review import decide, edit, list_items
from jobs.review.types import ItemFilter
from tests.helpers import migrated_session_factory
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from tests.integration.cli.test_cli_results import IDS, _finished_job


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        yield request.getfixturevalue("migrated_pg_url")


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_results_carry_the_reviews_and_filter_by_them(
    run_cli: RunCli, tmp_path: Path, db_url: str
) -> None:
    env, job_id = _finished_job(tmp_path, db_url)
    sf = migrated_session_factory(db_url)
    before = _lines(run_cli("results", job_id, env=env).stdout)
    assert [(r["decision"], r["edited"], r["reviewer"]) for r in before] == [(None,) * 3] * 3
    ids = {r.custom_id: r.item_id for r in list_items(sf, job_id, ItemFilter()).rows}
    edit(sf, ids[IDS[0]], "An edited caption.", "ann")
    decide(sf, [ids["broken"]], "rejected", "bob")

    rows = {r["custom_id"]: r for r in _lines(run_cli("results", job_id, env=env).stdout)}
    first = rows[IDS[0]]
    assert (first["decision"], first["edited"], first["reviewer"]) == (
        "approved",
        "An edited caption.",
        "ann",
    )
    assert first["result"] and first["result"] != "An edited caption."  # the model's, kept
    assert first["reviewed_at"].startswith("20")
    assert (rows["broken"]["decision"], rows[IDS[1]]["decision"]) == ("rejected", None)

    for state, expected in [
        ("approved", [IDS[0]]),
        ("rejected", ["broken"]),
        ("unreviewed", [IDS[1]]),
    ]:
        shown = run_cli("results", job_id, "--reviewed", state, env=env)
        assert [r["custom_id"] for r in _lines(shown.stdout)] == expected, state
    narrowed = run_cli("results", job_id, "--reviewed", "unreviewed", "--status", "failed", env=env)
    assert _lines(narrowed.stdout) == []

    out = tmp_path / "r.csv"
    assert run_cli("results", job_id, "--format", "csv", "-o", str(out), env=env).returncode == 0
    with out.open(encoding="utf-8") as f:
        table = {r["custom_id"]: r for r in csv.DictReader(f)}
    assert list(next(iter(table.values())))[-4:] == [
        "decision",
        "edited",
        "reviewer",
        "reviewed_at",
    ]
    assert (table[IDS[0]]["decision"], table[IDS[0]]["edited"]) == (
        "approved",
        "An edited caption.",
    )
    assert table[IDS[1]]["decision"] == ""


def test_the_openai_export_answers_with_the_edits_only_when_asked(
    run_cli: RunCli, tmp_path: Path, db_url: str
) -> None:
    env, job_id = _finished_job(tmp_path, db_url)
    sf = migrated_session_factory(db_url)
    ids = {r.custom_id: r.item_id for r in list_items(sf, job_id, ItemFilter()).rows}
    edit(sf, ids[IDS[1]], "A corrected caption.", "ann")

    def contents(*extra: str) -> dict[str, str | None]:
        done = run_cli(
            "results", job_id, "--format", "openai", "--status", "succeeded", *extra, env=env
        )
        assert done.returncode == 0, done.stderr
        found = {}
        for line in _lines(done.stdout):
            body = ChatCompletion.model_validate(line["response"]["body"])
            found[line["custom_id"]] = body.choices[0].message.content
        return found

    plain, edited = contents(), contents("--use-edits")
    assert edited[IDS[1]] == "A corrected caption." and plain[IDS[1]] != "A corrected caption."
    assert edited[IDS[0]] == plain[IDS[0]]  # not edited: the model's answer
    approved = run_cli(
        "results", job_id, "--format", "openai", "--use-edits", "--reviewed", "approved", env=env
    )
    assert [line["custom_id"] for line in _lines(approved.stdout)] == [IDS[1]]
    refused = run_cli("results", job_id, "--use-edits", env=env)
    assert_one_line_error(refused, 2, "--format openai", "[invalid_option]")
    unknown = run_cli("results", job_id, "--reviewed", "maybe", env=env)
    assert unknown.returncode == 2 and "usage_error" in unknown.stderr
