"""``--deliver-to TARGET --deliver-format FORMAT`` through the real CLI: ``run`` writes the job's
results once it ends (the tiny model, on SQLite and PostgreSQL) and says where, as ``status``
does after it; ``submit`` and ``schedule add`` refuse what cannot be delivered, each with a
stable code and one line, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def test_run_writes_sidecars_to_the_target_once_the_job_ends(
    run_cli: RunCli, default_db_env: dict[str, str], tmp_path: Path
) -> None:
    """Nested input folders, mirrored under the job's folder; an empty input in the errors
    file; the manifest last. ``run`` says where, and ``status`` (text and --json) after it."""
    inputs = tmp_path / "photos"
    write_images(inputs / "summer", 2)
    write_images(inputs / "winter" / "alps", 1, prefix="peak")
    (inputs / "winter" / "blank.png").write_bytes(b"")
    out = tmp_path / "catalogue"
    ran = run_cli(
        "run",
        "caption",
        str(inputs),
        "--max-new-tokens",
        "4",
        "--json",
        "--deliver-to",
        str(out),
        "--deliver-format",
        "txt",
        env=default_db_env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    (job_folder,) = out.iterdir()
    job_id = job_folder.name
    said = " ".join(ran.stderr.split())  # as printed, whatever the width
    assert f"output delivered to {out}/{job_id}/ (txt: 3 result(s), 1 error(s))" in said
    names = sorted(p.relative_to(job_folder).as_posix() for p in job_folder.rglob("*"))
    assert names == [
        "errors.jsonl",
        "manifest.json",
        "summer",
        "summer/img000.txt",
        "summer/img001.txt",
        "winter",
        "winter/alps",
        "winter/alps/peak000.txt",
    ]
    rows = {json.loads(line)["input"]: json.loads(line) for line in ran.stdout.splitlines()}
    caption = rows[str(inputs / "summer" / "img000.png")]["result"]
    assert (job_folder / "summer" / "img000.txt").read_text() == caption

    status = run_cli("status", job_id, env=default_db_env)
    assert f"results written to {out}/{job_id}/" in status.stdout, status.stdout
    shown = json.loads(run_cli("status", job_id, "--json", env=default_db_env).stdout)["output"]
    assert shown["state"] == "written" and shown["format"] == "txt"
    assert shown["manifest"] == f"{out}/{job_id}/manifest.json"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--deliver-to", "https://example.com/hook"], "invalid_output", "only s3://"),
        (["--deliver-to", "s3://no_such bucket/x/"], "invalid_output", "S3 prefix"),
        (["--deliver-to", "/srv/out/{jobid}/"], "invalid_output", "{jobid}"),
        (["--deliver-to", "/srv/out/{schedule}/"], "invalid_output", "only a schedule's"),
        (["--deliver-to", "/srv/out/{job/"], "invalid_output", "brace"),
        (["--deliver-to", "/srv/../etc/"], "invalid_output", "'..'"),
        (["--deliver-format", "csv"], "invalid_option", "goes with --deliver-to"),
        (["--deliver-to", "/srv/out/", "--deliver-format", "xml"], "invalid_option", "xml"),
    ],
)
def test_submit_refuses_what_cannot_be_delivered(
    run_cli: RunCli, tmp_path: Path, args: list[str], code: str, words: str
) -> None:
    write_images(tmp_path / "in", 1)
    refused = run_cli("submit", "caption", str(tmp_path / "in"), *args)
    assert_one_line_error(refused, 2, f"[{code}]", words)
    assert json.loads(run_cli("jobs", "--json").stdout) == []  # nothing was written


def test_txt_is_refused_for_a_kind_of_several_answers_and_a_file_as_target(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 1)
    source = str(tmp_path / "in")
    txt = ["--deliver-to", str(tmp_path / "out"), "--deliver-format", "txt"]
    refused = run_cli("submit", "ask", source, "-q", "What?", "-q", "Why?", *txt)
    assert_one_line_error(refused, 2, "[invalid_option]", "one text per item")
    (tmp_path / "a-file").write_text("")
    refused = run_cli("submit", "caption", source, "--deliver-to", str(tmp_path / "a-file"))
    assert_one_line_error(refused, 2, "[invalid_output]", "is a file")


def test_a_target_outside_the_output_prefixes_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    source = str(tmp_path / "in")
    prefixes = {"LLAVA_BATCH_OUTPUT_PREFIXES": f"s3://shop/out/,{tmp_path / 'exports'}"}
    for target in ("s3://shop/outbox/", "s3://other/out/", str(tmp_path / "elsewhere")):
        refused = run_cli("submit", "caption", source, "--deliver-to", target, **prefixes)
        assert_one_line_error(refused, 2, "[output_not_allowed]", "LLAVA_BATCH_OUTPUT_PREFIXES")
    refused = run_cli(
        "schedule", "add", "s", "caption", source, "--every", "1h",
        "--deliver-to", "s3://shop/{schedule}/", **prefixes,
    )  # fmt: skip
    assert_one_line_error(refused, 2, "[output_not_allowed]")
    assert json.loads(run_cli("jobs", "--json").stdout) == []


def test_schedule_add_keeps_its_template_and_refuses_a_bad_one(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 1)
    source, every = str(tmp_path / "in"), ["--every", "1h"]
    template = "s3://shop/{schedule}/{date}/"
    added = run_cli(
        "schedule", "add", "nightly", "caption", source, *every,
        "--deliver-to", template, "--deliver-format", "csv",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"each job's results go to {template} (csv)" in added.stderr
    (listed,) = json.loads(run_cli("schedule", "list", "--json").stdout)
    assert (listed["deliver_to"], listed["deliver_format"]) == (template, "csv")
    refused = run_cli(
        "schedule", "add", "other", "caption", source, *every, "--deliver-to", "/o/{when}/"
    )
    assert_one_line_error(refused, 2, "[invalid_output]", "{when}")
    refused = run_cli(
        "schedule", "add", "asks", "ask", source, *every, "-q", "A?", "-q", "B?",
        "--deliver-to", "/o/", "--deliver-format", "txt",
    )  # fmt: skip
    assert_one_line_error(refused, 2, "[invalid_option]", "one text per item")
    assert [s["name"] for s in json.loads(run_cli("schedule", "list", "--json").stdout)] == [
        "nightly"
    ]
