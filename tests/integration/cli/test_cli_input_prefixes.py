"""LLAVA_BATCH_INPUT_PREFIXES through the real CLI: a source outside the list is refused in one
line (exit 2, ``input_not_allowed``) before it is listed, so the bucket below need not even
exist; a bad entry is bad configuration; unset, nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import write_images
from tests.integration.cli.conftest import RunCli, assert_one_line_error


def test_a_source_outside_the_list_is_refused_in_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    allowed = f"s3://allowed-bucket/in/,{tmp_path / 'mine'}"
    for source in ["s3://someone-elses-bucket/photos/", "s3://allowed-bucket/inbox/"]:
        result = run_cli("submit", "caption", source, LLAVA_BATCH_INPUT_PREFIXES=allowed)
        assert_one_line_error(result, 2, "[input_not_allowed]", source, "s3://allowed-bucket/in/")
    write_images(tmp_path / "theirs", 1)
    result = run_cli("run", "caption", str(tmp_path / "theirs"), LLAVA_BATCH_INPUT_PREFIXES=allowed)
    assert_one_line_error(result, 2, "[input_not_allowed]")
    write_images(tmp_path / "mine", 1)
    done = run_cli(
        "submit", "caption", str(tmp_path / "mine"), "--json", LLAVA_BATCH_INPUT_PREFIXES=allowed
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items"] == 1


def test_a_bad_entry_is_bad_configuration(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("jobs", LLAVA_BATCH_INPUT_PREFIXES="photos/")
    assert_one_line_error(
        result, 2, "[invalid_settings]", "LLAVA_BATCH_INPUT_PREFIXES", "absolute folder"
    )
