"""``locate`` through the real CLI, on SQLite and PostgreSQL: ``submit locate`` stores its
expressions, a worker with the tiny model finds a box per expression, ``results`` gives them as
JSONL, CSV (pixel columns) and OpenAI lines, ``results --crops DIR`` cuts them out;
``schedule add locate`` and ``run locate`` take the same options, and a bad request is refused
with its code in one line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

from PIL import Image

from model.engine import EngineSpec
from model.transformers_engine import load_engine
from storage import open_blobs
from tests.helpers import make_resources, migrated_session_factory, write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error
from workers.local import work_locally


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def test_submit_locate_then_results_in_every_format_and_crops(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "shelf", 2)
    submitted = _ok(
        run_cli(
            "submit", "locate", str(tmp_path / "shelf"),
            "-q", "the red bus", "-q", "the logo", "--json", env=db_env,
        )
    )  # fmt: skip
    job_id = json.loads(submitted)["job_id"]
    sf = migrated_session_factory(db_env["LLAVA_BATCH_DATABASE_URL"])
    blobs = open_blobs(db_env["LLAVA_BATCH_STORAGE_URL"])
    engine = load_engine(EngineSpec(model="tiny-llava", cache_dir=tmp_path / "m", device="cpu"))
    assert work_locally(job_id, make_resources(sf, blobs, engine, gpu_batch_size=8))

    rows = [json.loads(line) for line in _ok(run_cli("results", job_id, env=db_env)).splitlines()]
    assert [r["status"] for r in rows] == ["succeeded"] * 2
    for row in rows:
        assert [f["expression"] for f in row["result"]] == ["the red bus", "the logo"]
        assert all(
            len(f["pixels"]) == 4 and f["frame"]["name"] == "centre_crop" for f in row["result"]
        )
    table = list(
        csv.DictReader(io.StringIO(_ok(run_cli("results", job_id, "--format", "csv", env=db_env))))
    )
    assert len(table) == 4 and {"x1", "y1", "x2", "y2", "frame", "flags"} <= set(table[0])
    first = rows[0]["result"][0]
    assert [int(table[0][k]) for k in ("x1", "y1", "x2", "y2")] == first["pixels"]
    openai = _ok(run_cli("results", job_id, "--format", "openai", env=db_env)).splitlines()
    content = json.loads(
        json.loads(openai[0])["response"]["body"]["choices"][0]["message"]["content"]
    )
    assert content[0]["text"] == first["text"]

    crops = tmp_path / "crops"
    done = run_cli("results", job_id, "--crops", str(crops), env=db_env)
    _ok(done)
    assert "crop(s) under" in done.stderr
    written = sorted(p.name for p in crops.iterdir())
    non_empty = [
        f"img{n:03d}.{i + 1}-{slug}.png"
        for n, row in enumerate(rows)
        for i, (slug, f) in enumerate(zip(("the-red-bus", "the-logo"), row["result"], strict=True))
        if f["pixels"][2] > f["pixels"][0] and f["pixels"][3] > f["pixels"][1]
    ]
    assert written == sorted(non_empty)
    for name in written:
        n, i = int(name[3:6]), int(name.split(".")[1].split("-")[0]) - 1
        x1, y1, x2, y2 = rows[n]["result"][i]["pixels"]
        assert Image.open(crops / name).size == (x2 - x1, y2 - y1)
    assert_one_line_error(
        run_cli("results", job_id, "--crops", str(crops), "--format", "csv", env=db_env),
        2, "[invalid_option]",
    )  # fmt: skip


def test_refusals_and_schedule_add_locate(
    run_cli: RunCli, db_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "shelf", 1)
    source = str(tmp_path / "shelf")
    assert_one_line_error(
        run_cli("submit", "locate", source, env=db_env), 2, "[invalid_expressions]"
    )
    assert_one_line_error(
        run_cli("submit", "locate", source, "-q", "x", "--template", "qwen", env=db_env),
        2, "[invalid_template]",
    )  # fmt: skip
    caption = json.loads(_ok(run_cli("submit", "caption", source, "--json", env=db_env)))
    assert_one_line_error(
        run_cli("results", caption["job_id"], "--crops", str(tmp_path / "c"), env=db_env),
        2, "[invalid_option]", "locate",
    )  # fmt: skip
    _ok(
        run_cli(
            "schedule",
            "add",
            "shelves",
            "locate",
            source,
            "--every",
            "1h",
            "-q",
            "the logo",
            env=db_env,
        )
    )
    listed = json.loads(_ok(run_cli("schedule", "list", "--json", env=db_env)))
    (shelves,) = [s for s in listed if s["name"] == "shelves"]
    assert shelves["kind"] == "locate"
    assert_one_line_error(
        run_cli("schedule", "add", "none", "locate", source, "--every", "1h", env=db_env),
        2, "[invalid_expressions]",
    )  # fmt: skip


def test_run_locate_finds_a_box_per_expression_here_and_now(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 2)
    run = run_cli("run", "locate", str(tmp_path / "imgs"), "-q", "the lid", "--json", timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [[f["expression"] for f in r["result"]] for r in rows] == [["the lid"]] * 2
    assert all(len(r["result"][0]["pixels"]) == 4 for r in rows)
