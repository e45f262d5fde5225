"""bench/device_wheels.py: which distributions travel to a lent GPU machine as wheels. Nothing
is downloaded here; the imports are recorded from a real child process."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import device_wheels
finally:
    sys.path.remove(str(ROOT / "bench"))


def test_a_child_s_imports_are_recorded_as_distributions(tmp_path: Path) -> None:
    script = tmp_path / "uses_pillow.py"
    script.write_text("import sys\nimport PIL.Image\nassert sys.argv[1:] == ['--flag']\n")
    found = device_wheels.imported_by(script, ["--flag"])
    assert "pillow" in found
    assert "sqlalchemy" not in found  # only what the script imported, not what is installed


def test_requirements_are_followed_with_their_extras_but_not_into_the_image() -> None:
    plain = device_wheels.required_by("alembic", [], stop=frozenset())
    assert {"alembic", "sqlalchemy", "mako", "markupsafe"} <= plain
    stopped = device_wheels.required_by("alembic", [], stop=frozenset({"mako"}))
    assert "mako" in stopped and "markupsafe" not in stopped
    ours = device_wheels.required_by("llava-batch", ["gpu"], stop=device_wheels.DEVICE_IMAGE)
    assert {"bitsandbytes", "sqlalchemy", "pydantic", "llguidance"} <= ours
    assert "pytest" not in ours  # the test extra was not asked for


def test_what_travels_is_imported_required_and_missing_from_the_image() -> None:
    imported = {"sqlalchemy", "torch", "boto3", "llava-batch", "pydantic", "trio"}
    required = {"sqlalchemy", "torch", "boto3", "llava-batch", "pydantic", "celery"}
    assert device_wheels.to_carry(imported, required) == ["bitsandbytes", "pydantic", "sqlalchemy"]


def test_names_compare_as_the_index_does() -> None:
    assert device_wheels.normalise("Typing_Extensions") == "typing-extensions"
    assert device_wheels.normalise("pydantic.core") == "pydantic-core"


def test_the_device_command_fits_one_call() -> None:
    assert len(device_wheels.DEVICE_COMMAND) < 2000  # the run tool's limit
    assert "--target /tmp/site .whl/*.whl" in device_wheels.DEVICE_COMMAND
