"""The embedded one-process mode, as the README's demo runs it, and the read-side commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli

ROOT = Path(__file__).resolve().parents[3]


def test_readme_demo_captions_the_sample_catalogue(run_cli: RunCli) -> None:
    catalogue = ROOT / "tests" / "data" / "catalogue"
    result = run_cli("run", "caption", str(catalogue), "--max-new-tokens", "6", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert sorted(line.split("\t")[0] for line in lines) == sorted(
        str(p) for p in catalogue.iterdir()
    )
    assert all(line.split("\t")[1].strip() for line in lines)
    assert "completed" in result.stdout
    assert "captions are noise" in result.stderr  # the tiny model says what it is


def test_manifest_prompts_ids_and_the_read_side(run_cli: RunCli, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "imgs", 3)
    (tmp_path / "m.jsonl").write_text(
        "\n".join(
            json.dumps({"input": f"imgs/{p.name}", "id": f"sku-{i}", "prompt": f"What is {i}?"})
            for i, p in enumerate(paths)
        )
        + "\n"
    )
    run = run_cli("run", "caption", str(tmp_path / "m.jsonl"), "--json", timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["custom_id"] for r in rows] == ["sku-0", "sku-1", "sku-2"]
    assert [r["input"] for r in rows] == [f"imgs/{p.name}" for p in paths]
    job_id = run_cli("jobs", "--json").stdout
    (job,) = json.loads(job_id)
    assert job["status"] == "completed" and job["counts"]["succeeded"] == 3

    status = json.loads(run_cli("status", job["job_id"][:8], "--json").stdout)
    assert status["counts"]["succeeded"] == 3 and status["items_per_second"] > 0

    out = tmp_path / "r.csv"
    assert run_cli("results", job["job_id"], "--format", "csv", "-o", str(out)).returncode == 0
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert [r["custom_id"] for r in table] == ["sku-0", "sku-1", "sku-2"]
    assert list(table[0]) == [
        "item_id",
        "custom_id",
        "input",
        "status",
        "result",
        "error_code",
        "error_message",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "decision",  # the review page's (docs/review.md): empty until someone reviews
        "edited",
        "reviewer",
        "reviewed_at",
    ]


def test_run_with_inputs_that_escaped_the_decoder_captions_the_rest(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Issue 9: a GIF that made Pillow raise struct.error, and DDS bytes named .png, killed
    ``run`` with "internal error", printed nothing and left the job in_progress."""
    import io

    from PIL import Image

    write_images(tmp_path / "dir", 2)
    gif = io.BytesIO()
    Image.new("P", (8, 8), 1).save(gif, format="GIF")
    (tmp_path / "dir" / "cut.gif").write_bytes(gif.getvalue()[:-1] + b",")
    dds = b"DDS " + b"\x7c\x00\x00\x00" + b"\x07\x10\x00\x00" + b"\x04\x00\x00\x00" * 2
    (tmp_path / "dir" / "fake.png").write_bytes(dds + b"\x00" * 120)
    result = run_cli("run", "caption", str(tmp_path / "dir"), "--json", timeout=300)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    rows = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["img000.png"]["status"] == rows["img001.png"]["status"] == "succeeded"
    assert rows["cut.gif"]["error_code"] == "image_decode_error"
    assert rows["fake.png"]["error_code"] in ("unsupported_format", "image_decode_error")
    (job,) = json.loads(run_cli("jobs", "--json").stdout)
    assert job["status"] == "completed"


def test_run_ask_answers_every_question_and_refuses_none_before_loading(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 2)
    run = run_cli(
        "run",
        "ask",
        str(tmp_path / "imgs"),
        "-q",
        "What is it?",
        "-q",
        "Colour?",
        "--json",
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [[a["question"] for a in r["result"]] for r in rows] == [["What is it?", "Colour?"]] * 2
    refused = run_cli("run", "ask", str(tmp_path / "imgs"))
    assert refused.returncode == 2 and "[invalid_questions]" in refused.stderr
    assert "loading model" not in refused.stderr
