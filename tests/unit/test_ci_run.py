"""``.ci/run`` installs Chromium and its driver for the browser tests when they are missing, and
then runs the README's test command. Run here from a copy with a PATH that has neither, as a
user who is not root: ``id``, ``sudo`` and ``apt-get`` are stand-ins (installing packages, or
becoming root, is not something a test may do), ``sudo`` resetting the environment as the real
one does by default (``env_reset``); everything else is the machine's own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)


def _repo(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of .ci/run beside a README whose test command only says it ran; a bin folder
    with the machine's own bash, awk, dirname, env and cat, and no chromium."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    (repo / "README.md").write_text(
        "<!-- test-command -->\n```sh\necho pytest would run\n```\n", encoding="utf-8"
    )
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("bash", "awk", "dirname", "env", "cat"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_ / tool).symlink_to(found)
    return repo, bin_


def _run(repo: Path, bin_: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / ".ci" / "run")],
        env={"PATH": str(bin_), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_apt_get_under_sudo_still_gets_debian_frontend_noninteractive(tmp_path: Path) -> None:
    repo, bin_ = _repo(tmp_path)
    log = tmp_path / "apt.log"
    _stub(bin_, "id", 'if [ "$1" = -u ]; then echo 1000; else echo uid=1000; fi')
    # sudo -n CMD: CMD with the environment reset, as sudo's default env_reset leaves it.
    _stub(bin_, "sudo", f'[ "$1" = -n ] && shift; exec env -i PATH="{bin_}" "$@"')
    _stub(bin_, "apt-get", f'echo "frontend=${{DEBIAN_FRONTEND:-}} $*" >> "{log}"')
    done = _run(repo, bin_, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pytest would run" in done.stdout
    lines = log.read_text(encoding="utf-8").splitlines()
    install = [line for line in lines if " install " in f" {line} "]
    assert len(install) == 1, lines
    assert install[0].startswith("frontend=noninteractive "), install[0]
    assert "chromium chromium-driver" in install[0]


def test_an_install_that_cannot_be_done_says_so_and_the_tests_still_run(tmp_path: Path) -> None:
    """Not root, no sudo (apt-get refuses), or no apt-get at all: a warning that the browser
    tests will fail, and the test command runs (they fail there, never skipped)."""
    repo, bin_ = _repo(tmp_path)
    _stub(bin_, "id", 'if [ "$1" = -u ]; then echo 1000; else echo uid=1000; fi')
    _stub(bin_, "apt-get", 'echo "E: are you root?" >&2; exit 100')
    refused = _run(repo, bin_, tmp_path)
    assert "chromium could not be installed" in refused.stderr, refused.stderr
    assert "pytest would run" in refused.stdout
    (bin_ / "apt-get").unlink()
    missing = _run(repo, bin_, tmp_path)
    assert "no apt-get: the browser tests will fail" in missing.stderr, missing.stderr
    assert "pytest would run" in missing.stdout
