"""The CLI starts fast, measured by what it imports, not by a timer: the help pages import no
database layer and no settings; ``jobs`` and ``status`` (on SQLite and PostgreSQL) import the
database but nothing of the worker side, the broker, S3, metrics or images; none imports torch or
transformers. An extract submit starts no subprocess to compile its schema (the worker compiles
it, once per schema; submit checks it structurally). bench/startup.py times the same commands.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli

HEAVY = ("alembic", "pypdfium2", "jsonschema", "llguidance", "torch", "transformers")
# What no command needs to start: the model stack, the worker side (Celery, the broker client,
# Prometheus's HTTP server and the other web modules), S3 (boto3) and image decoding.
NOT_AT_START = (
    *HEAVY,
    "triton",
    "numpy",
    "PIL",
    "celery",
    "kombu",
    "redis",
    "boto3",
    "botocore",
    "urllib3",
    "prometheus_client",
    "http.server",
    "wsgiref",
    "workers.tasks",
    "workers.pipeline",
    "croniter",
    # the settings are a plain pydantic model read by jobs.settings itself: pydantic-settings
    # cost every command that reads them 25-40 ms
    "pydantic_settings",
    # the review page's web stack: only `serve` imports it, in its body
    "starlette",
    "jinja2",
    "uvicorn",
    "multipart",
    "jobs.web",
)
# What a help page needs neither: it reads no database and no settings, validates nothing (the
# kinds' parameters and typer's coercion are pydantic), and prints no progress bar. Its commands
# are made from the kinds' declarations (jobs.kinds.commands), not from the kinds, and the error
# boundary names storage's errors without importing storage.
NOT_FOR_HELP = (
    *NOT_AT_START,
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "pydantic",
    "jobs.db",
    "jobs.settings",
    "jobs.queries",
    "jobs.lifecycle",
    "jobs.kinds.registry",
    "jobs.kinds.base",
    "jobs.submit.openai_reader",
    "jobs.review",
    "model.engine",
    "storage",
    "rich.progress",
)
# What the commands that only read a job (``jobs``, ``status``) need neither: they read with
# plain SQL on the driver (jobs.sqlread); SQLAlchemy's import alone was 0.18 s of them.
NOT_FOR_READS = (*NOT_AT_START, "sqlalchemy", "alembic", "jobs.db", "jobs.queries")
# llguidance is not here: it imports no torch, and a submit may compile a schema with it.
NEVER = ("torch", "transformers", "triton")

# Runs the real entry point in this process, then reports what it imported, whether it started
# a subprocess, and whether it left start-up's objects frozen for its exit (the collector's pass
# over them at shutdown was 50 to 60 ms of a ``jobs``). ``subprocess.Popen`` is wrapped before
# anything of ours is imported.
PROBE = """
import gc, json, subprocess, sys
from importlib.metadata import entry_points
started = []
class Recording(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        started.append(str(args))
        super().__init__(args, *rest, **kwargs)
subprocess.Popen = Recording
(main,) = entry_points(group="console_scripts", name="llava-batch")
watched = json.loads(sys.argv[2])
sys.argv = ["llava-batch", *json.loads(sys.argv[1])]
code = None
try:
    main.load()()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in watched if m in sys.modules)
report = {"code": code, "heavy": heavy, "subprocesses": started}
print("PROBE " + json.dumps({**report, "frozen": gc.get_freeze_count() > 0}))
"""


def _probe(
    cli_env: dict[str, str], *args: str, watch: tuple[str, ...] = HEAVY
) -> dict[str, object]:
    # Not from the repository root: a stale ``*.egg-info`` there would shadow the entry point.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(watch)],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=Path(cli_env["LLAVA_BATCH_HOME"]).parent,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, result.stdout + result.stderr
    return dict(json.loads(lines[-1].removeprefix("PROBE ")))


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("submit", "--help"),
        ("submit", "caption", "--help"),
        ("status", "--help"),
        ("run", "--help"),
        ("schedule", "add", "--help"),
        ("serve", "--help"),
    ],
    ids=" ".join,
)
def test_help_imports_no_database_and_no_settings(
    cli_env: dict[str, str], args: tuple[str, ...]
) -> None:
    report = _probe(cli_env, *args, watch=NOT_FOR_HELP)
    assert report["code"] in (0, None)
    assert report["heavy"] == []
    assert report["frozen"]


# An installed distribution that declares a pydantic plugin; importing it leaves a mark.
PLUGIN = """
import os, pathlib
pathlib.Path(os.environ["PLUGIN_MARK"]).write_text("loaded")
class Plugin:
    def new_schema_validator(self, *args, **kwargs):
        return None, None, None
plugin = Plugin()
"""


def test_the_cli_skips_pydantic_s_plugin_search_unless_the_user_asks(
    run_cli: RunCli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """pydantic reads every installed distribution's entry points for plugins when it builds a
    first model, 2-3 % of a ``jobs``: the CLI turns the search off, as typer does for its own
    validators, and keeps a PYDANTIC_DISABLE_PLUGINS the user set (here empty: load them all)."""
    site = tmp_path / "site"
    dist = site / "probe_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nprobe = probe_plugin:plugin\n")
    (site / "probe_plugin.py").write_text(PLUGIN)
    mark = tmp_path / "loaded"
    env = {k: v for k, v in cli_env.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["PLUGIN_MARK"] = str(mark)

    skipped = run_cli("jobs", env=env)
    assert skipped.returncode == 0, skipped.stderr
    assert not mark.exists()

    asked = run_cli("jobs", env=env, PYDANTIC_DISABLE_PLUGINS="")
    assert asked.returncode == 0, asked.stderr
    assert mark.read_text() == "loaded"


def test_a_mistyped_command_imports_no_database(cli_env: dict[str, str]) -> None:
    """The error boundary maps a usage error without loading what it maps other errors from."""
    report = _probe(cli_env, "stauts", watch=NOT_FOR_HELP)
    assert report["code"] == 2
    assert report["heavy"] == []
    assert report["frozen"]  # an error's exit too


def test_jobs_and_status_import_no_sqlalchemy_and_nothing_of_the_worker_side(
    run_cli: RunCli, cli_env: dict[str, str], db_env: dict[str, str], tmp_path: Path
) -> None:
    db_cli_env = {**cli_env, **db_env}
    write_images(tmp_path / "c", 1)
    submitted = run_cli(
        "submit", "caption", str(tmp_path / "c"), "--json", "--meta", "team=a", env=db_cli_env
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    for args in (
        ("jobs",),
        ("jobs", "--meta", "team=a", "--json"),
        ("status", job_id),
        ("status", job_id[:8], "--json"),
    ):
        report = _probe(db_cli_env, *args, watch=NOT_FOR_READS)
        assert report["code"] in (0, None), (args, report)
        assert report["heavy"] == [], args
        assert report["frozen"], args


def test_the_embedded_database_is_set_up_by_a_first_jobs_then_read_without_sqlalchemy(
    cli_env: dict[str, str],
) -> None:
    """A fresh home has no database file: the first ``jobs`` creates and migrates it (through
    SQLAlchemy and Alembic); the next reads it with plain SQL."""
    embedded = {k: v for k, v in cli_env.items() if k != "LLAVA_BATCH_DATABASE_URL"}
    assert not (Path(embedded["LLAVA_BATCH_HOME"]) / "llava-batch.sqlite3").exists()
    first = _probe(embedded, "jobs", watch=("alembic",))
    assert first["code"] in (0, None) and first["heavy"] == ["alembic"]
    again = _probe(embedded, "jobs", watch=NOT_FOR_READS)
    assert again["code"] in (0, None) and again["heavy"] == []


def test_a_command_leaves_the_embedded_database_whole_in_its_file(
    run_cli: RunCli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The CLI closes its database connections as it exits (start-up's objects are frozen for
    the exit, so the last collection no longer does it): SQLite then moves its write-ahead log
    into the database file, which holds every table on its own, with no ``-wal`` beside it."""
    embedded = {k: v for k, v in cli_env.items() if k != "LLAVA_BATCH_DATABASE_URL"}
    database = Path(embedded["LLAVA_BATCH_HOME"]) / "llava-batch.sqlite3"
    write_images(tmp_path / "c", 1)
    for args in (("jobs",), ("submit", "caption", str(tmp_path / "c"), "--json")):
        done = run_cli(*args, env=embedded)
        assert done.returncode == 0, done.stderr
        assert not database.with_name(database.name + "-wal").exists(), args
        alone = tmp_path / "alone.sqlite3"  # the file as a backup would copy it
        shutil.copy(database, alone)
        with sqlite3.connect(alone) as copy:
            tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master")}
            jobs = copy.execute("SELECT count(*) FROM jobs").fetchone()[0]
        assert {"jobs", "items"} <= tables, args
        assert jobs == (1 if args[0] == "submit" else 0), args


def test_extract_submit_compiles_no_schema_in_a_subprocess(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "docs", 1)
    schema = tmp_path / "s.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"vendor": {"type": "string", "maxLength": 40}},
                "required": ["vendor"],
            }
        )
    )
    report = _probe(
        cli_env,
        "submit",
        "extract",
        str(tmp_path / "docs"),
        "--schema",
        str(schema),
        "--json",
        watch=NEVER,
    )
    assert report["code"] in (0, None)
    assert report["subprocesses"] == []
    assert report["heavy"] == []


def test_extract_submit_still_refuses_an_unsupported_schema(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "docs", 1)
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "date"}}}))
    result = run_cli("submit", "extract", str(tmp_path / "docs"), "--schema", str(schema))
    assert result.returncode == 2, result.stderr
    assert "schema_invalid" in result.stderr


def test_a_token_budget_is_checked_against_the_context_without_torch(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The context is read from the checkpoint's config, never from a loaded model: refused
    for a tiny model (its context is known), looked up in the hub cache for a hub id."""
    write_images(tmp_path / "c", 1)
    for model, codes in (("tiny-llava", (2,)), ("llava-hf/llava-1.5-7b-hf", (0, None))):
        args = ("submit", "caption", str(tmp_path / "c"), "--max-new-tokens", "2000")
        report = _probe(cli_env, *args, "--model", model, "--json", watch=NEVER)
        assert report["code"] in codes, report
        assert report["heavy"] == []
