"""``llava-batch run`` while it works: everything is checked before the model loads, results
stream in any results format, and progress shows on stderr (a bar on a terminal, plain lines
otherwise)."""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import write_images
from tests.integration.cli.conftest import CLI, RunCli, assert_one_line_error


@pytest.mark.parametrize(
    "args",
    [
        ("caption", "{tmp}/no-such-dir"),
        ("caption", "{tmp}/bad.jsonl"),
        ("caption", "{tmp}/imgs", "-o", "{tmp}/no-such-dir/out.csv"),
        ("caption", "{tmp}/imgs", "--errors", "{tmp}/errors.jsonl"),
        ("caption", "{tmp}/imgs", "--json", "--format", "csv"),
    ],
)
def test_a_bad_source_or_flag_never_costs_a_model_load(
    run_cli: RunCli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    write_images(tmp_path / "imgs", 1)
    (tmp_path / "bad.jsonl").write_text('{"input": "imgs/img000.png"}\n{"input": \n')
    result = run_cli("run", *(a.format(tmp=tmp_path) for a in args))
    assert_one_line_error(result, 2)
    assert "loading model" not in result.stderr
    assert json.loads(run_cli("jobs", "--json").stdout) == []  # nothing written either


def test_results_stream_as_csv_to_a_file_with_plain_progress_lines(
    run_cli: RunCli, tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 4)
    out = tmp_path / "out.csv"
    result = run_cli(
        "run", "caption", str(tmp_path / "imgs"), "--batch-size", "2", "--format", "csv",
        "-o", str(out), "--max-new-tokens", "4", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["input"]).name for r in rows] == [f"img00{i}.png" for i in range(4)]
    assert all(r["status"] == "succeeded" and r["result"] for r in rows)
    # stderr is not a terminal: plain lines, no bar, and a last one with the totals
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert progress and progress[-1].startswith("progress: 4/4 items done (0 failed), ")
    assert "items/s" in progress[-1] and "ETA" in progress[-1]
    assert "\x1b[" not in result.stderr
    assert "completed: 4/4 item(s) done" in result.stderr  # the summary: stdout is the data


def test_openai_format_streams_batch_output_lines(run_cli: RunCli, tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 2)
    result = run_cli(
        "run", "caption", str(tmp_path / "imgs"), "--format", "openai", "--max-new-tokens", "3",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in lines)


def test_a_progress_bar_on_a_terminal_and_results_on_stdout(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_images(tmp_path / "imgs", 4)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [CLI, "run", "caption", str(tmp_path / "imgs"), "--batch-size", "2"],
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**cli_env, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(follower)
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process closed its end
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(leader)
    terminal = shown.decode(errors="replace")
    assert process.returncode == 0, terminal
    assert "4/4" in terminal and "items/s" in terminal and "ETA" in terminal, terminal
    assert "progress: " not in terminal  # the bar, not the plain lines
    results = [line for line in stdout.splitlines() if "\t" in line]
    assert [Path(line.split("\t")[0]).name for line in results] == [
        f"img00{i}.png" for i in range(4)
    ]
    assert "\x1b[" not in stdout  # the data stays plain
