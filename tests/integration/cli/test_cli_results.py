"""The read side through the real CLI: ``results --format openai`` (parsed with the ``openai``
package's types), ``--errors``, ``--status``, usage and request counts in ``status --json``, and
``--meta`` on submit, shown by ``status``/``jobs`` and matched by ``jobs --meta`` / ``--name``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import Batch, BatchRequestCounts, CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from jobs.submit.request import SubmitRequest
from model.fake import FakeEngine
from storage import open_blobs
from tests.helpers import make_resources, migrated_session_factory, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from workers.local import run_job_locally

IDS = ["sku-ü/1", 'sku "2"']


def _finished_job(tmp_path: Path, url: str | None = None) -> tuple[dict[str, str], str]:
    """A caption job run here with the fake engine (two good items, one broken), in a database
    (``url``; a SQLite one by default) the CLI is then pointed at."""
    url = url or f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    paths = write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image at all")
    lines = [{"input": f"imgs/{p.name}", "id": i} for p, i in zip(paths, IDS, strict=True)]
    lines.append({"input": "imgs/broken.png", "id": "broken"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    sf = migrated_session_factory(url)
    blobs = open_blobs(str(tmp_path / "blobs"))
    request = SubmitRequest.of("caption", [str(manifest)], "tiny-llava", batch_size=8)
    job_id = run_job_locally(
        request, make_resources(sf, blobs, FakeEngine(), gpu_batch_size=8), max_prompt_chars=1000
    ).job_id
    env = {"LLAVA_BATCH_DATABASE_URL": url, "LLAVA_BATCH_STORAGE_URL": str(tmp_path / "blobs")}
    return env, job_id


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_results_in_the_openai_batch_format(run_cli: RunCli, tmp_path: Path) -> None:
    env, job_id = _finished_job(tmp_path)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    done = run_cli(
        "results", job_id[:8], "--format", "openai", "-o", str(out), "--errors", str(errors),
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    good = _lines(out.read_text(encoding="utf-8"))
    assert [line["custom_id"] for line in good] == IDS
    for line in good:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.model == "tiny-llava" and body.choices[0].message.content
        assert body.choices[0].finish_reason == "stop"
        assert body.usage is not None and body.usage.total_tokens > 0
    (bad,) = _lines(errors.read_text(encoding="utf-8"))
    assert bad["custom_id"] == "broken" and bad["error"] is None
    assert bad["response"]["status_code"] == 400
    error = ErrorObject.model_validate(bad["response"]["body"]["error"])
    assert error.code in ("unsupported_format", "image_decode_error") and error.message

    # to stdout, failures in the same stream; --status narrows it
    mixed = run_cli("results", job_id, "--format", "openai", env=env)
    assert len(_lines(mixed.stdout)) == 3
    failed = run_cli("results", job_id, "--format", "openai", "--status", "failed", env=env)
    assert [x["custom_id"] for x in _lines(failed.stdout)] == ["broken"]
    succeeded = run_cli("results", job_id, "--status", "succeeded", env=env)
    rows = _lines(succeeded.stdout)
    assert [r["custom_id"] for r in rows] == IDS
    for row in rows:
        CompletionUsage.model_validate(row["usage"])
        assert row["finish_reason"] == "stop"

    csv_out = tmp_path / "r.csv"
    assert (
        run_cli("results", job_id, "--format", "csv", "-o", str(csv_out), env=env).returncode == 0
    )
    with csv_out.open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["custom_id"] for r in table] == [*IDS, "broken"]
    assert all(int(r["total_tokens"]) > 0 for r in table[:2]) and table[2]["total_tokens"] == ""

    refused = run_cli("results", job_id, "--errors", str(errors), env=env)
    assert_one_line_error(refused, 2, "--format openai", "[invalid_option]")
    unknown = run_cli("results", job_id, "--status", "lost", env=env)
    assert unknown.returncode == 2 and "usage_error" in unknown.stderr


def test_status_json_has_usage_totals_and_request_counts(run_cli: RunCli, tmp_path: Path) -> None:
    env, job_id = _finished_job(tmp_path)
    status = json.loads(run_cli("status", job_id, "--json", env=env).stdout)
    counts = BatchRequestCounts.model_validate(status["request_counts"])
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    usage = CompletionUsage.model_validate(status["usage"])
    rows = _lines(run_cli("results", job_id, env=env).stdout)
    assert usage.total_tokens == sum(r["usage"]["total_tokens"] for r in rows if r["usage"])
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    human = run_cli("status", job_id, env=env).stdout
    assert f"= {usage.total_tokens}" in human


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_status_prints_an_openai_batch_object(
    run_cli: RunCli, tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    url = request.getfixturevalue("migrated_pg_url") if database == "postgresql" else None
    env, job_id = _finished_job(tmp_path, url)
    shown = run_cli("status", job_id[:8], "--format", "openai", env=env)
    assert shown.returncode == 0, shown.stderr
    batch = Batch.model_validate_json(shown.stdout)  # one JSON document, nothing else
    assert batch.id == job_id and batch.object == "batch" and batch.status == "completed"
    assert batch.model == "tiny-llava" and batch.endpoint == "/v1/chat/completions"
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    assert batch.completed_at is not None and batch.created_at <= batch.completed_at
    assert batch.usage is not None and batch.usage.total_tokens > 0

    watched = run_cli("status", job_id, "--watch", "--format", "openai", env=env)
    assert watched.returncode == 0, watched.stderr
    assert Batch.model_validate_json(watched.stdout) == batch
    as_json = json.loads(run_cli("status", job_id, "--format", "json", env=env).stdout)
    assert as_json["request_counts"] == counts.model_dump()
    refused = run_cli("status", job_id, "--format", "openai", "--json", env=env)
    assert_one_line_error(refused, 2, "--format", "[invalid_option]")


def test_meta_on_submit_is_shown_and_matched(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "c", 1)
    source = str(tmp_path / "c")

    def submit(*args: str) -> str:
        done = run_cli("submit", *args, "--json")
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["job_id"])

    tagged = submit("caption", source, "--meta", "team=search", "--meta", "run=a=b", "--name", "n")
    asked = submit("ask", source, "-q", "Brand?", "--meta", "team=ads", "--name", "n")
    submit("caption", source)

    status = json.loads(run_cli("status", tagged, "--json").stdout)
    assert status["metadata"] == {"team": "search", "run": "a=b"}
    assert status["request_counts"] == {"total": 1, "completed": 0, "failed": 0}
    assert "metadata: team=search, run=a=b" in run_cli("status", tagged).stdout
    assert "team=ads" in run_cli("jobs").stdout

    def listed(*args: str) -> list[str]:
        done = run_cli("jobs", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [job["job_id"] for job in json.loads(done.stdout)]

    assert len(listed()) == 3
    assert listed("--meta", "team=search") == [tagged]
    assert listed("--meta", "team=search", "--meta", "run=a=b") == [tagged]
    assert listed("--meta", "team=search", "--meta", "run=x") == []
    assert set(listed("--name", "n")) == {tagged, asked}
    assert listed("--name", "n", "--meta", "team=ads") == [asked]
    (shown,) = json.loads(run_cli("jobs", "--json", "--meta", "team=ads").stdout)
    assert shown["metadata"] == {"team": "ads"}


def test_bad_meta_is_refused_at_submit_and_nothing_is_written(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "c", 1)
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}))
    too_many = [arg for i in range(17) for arg in ("--meta", f"k{i}=v")]
    cases = [
        (["caption", "--meta", "novalue"], "KEY=VALUE"),
        (["caption", *too_many], "17 pairs"),
        (["extract", "--schema", str(schema), "--meta", "k" * 65 + "=v"], "65 characters"),
        (["ask", "-q", "Brand?", "--meta", "k=" + "v" * 513], "513 characters"),
    ]
    for args, words in cases:
        refused = run_cli("submit", args[0], str(tmp_path / "c"), *args[1:])
        assert_one_line_error(refused, 2, words, "[invalid_metadata]")
    assert json.loads(run_cli("jobs", "--json").stdout) == []
    refused = run_cli("jobs", "--meta", "novalue")
    assert_one_line_error(refused, 2, "[invalid_metadata]")
