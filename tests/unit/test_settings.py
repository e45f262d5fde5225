"""How the settings read LLAVA_BATCH_* variables (jobs.settings, a plain pydantic model with
its own reader): each field from its variable, as plain text, values in code over them, and
without pydantic-settings, whose import cost every command's start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from jobs.settings import Settings, variable_of

ROOT = Path(__file__).resolve().parents[2]


def _as_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_every_field_is_read_from_its_variable() -> None:
    defaults = Settings()
    fields = [name for name in Settings.model_fields if getattr(defaults, name) is not None]
    env = {variable_of(name): _as_text(getattr(defaults, name)) for name in fields}
    settings = Settings.from_env(env)
    assert settings.model_fields_set == set(fields)
    assert settings == defaults


def test_message_size_is_read_from_batch_size_and_set_by_either_name() -> None:
    assert Settings.from_env({"LLAVA_BATCH_BATCH_SIZE": "16"}).message_size == 16
    # the field's own name is no variable (load_settings refuses it as unknown)
    assert Settings.from_env({"LLAVA_BATCH_MESSAGE_SIZE": "16"}).message_size == 8
    env = {"LLAVA_BATCH_BATCH_SIZE": "16"}
    assert Settings.from_env(env, message_size=3).message_size == 3
    assert Settings.from_env(env, LLAVA_BATCH_BATCH_SIZE=5).message_size == 5
    assert Settings(message_size=3).message_size == 3


def test_values_in_code_win_and_construction_reads_no_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLAVA_BATCH_MODEL", "from-env")
    assert Settings().model == "tiny-llava"
    assert Settings(max_new_tokens=9).model == "tiny-llava"
    assert Settings.from_env().model == "from-env"
    assert Settings.from_env(model="in-code").model == "in-code"
    assert Settings.from_env({}).model == "tiny-llava"  # the mapping given, not os.environ


def test_variable_names_match_in_any_case() -> None:
    assert Settings.from_env({"llava_batch_model": "lower"}).model == "lower"


def test_values_are_plain_text_never_json() -> None:
    settings = Settings.from_env(
        {
            "LLAVA_BATCH_MODEL": '"quoted"',
            "LLAVA_BATCH_NOTIFY_URL": "null",
            "LLAVA_BATCH_WEBHOOK_ALLOW_HTTP_HOSTS": " a , b,,",
            "LLAVA_BATCH_REUSE": "yes",
        }
    )
    assert settings.model == '"quoted"'
    assert settings.notify_url == "null"
    assert settings.webhook_allow_http_hosts == ("a", "b")
    assert settings.reuse is True
    with pytest.raises(ValidationError, match="neither an s3"):
        Settings.from_env({"LLAVA_BATCH_INPUT_PREFIXES": '["s3://bucket/in/"]'})


def test_an_empty_variable_is_its_empty_text() -> None:
    settings = Settings.from_env(
        {
            "LLAVA_BATCH_COMPLETION_WINDOW": "",
            "LLAVA_BATCH_INPUT_PREFIXES": "",
            "LLAVA_BATCH_NOTIFY_URL": "",
        }
    )
    assert settings.completion_window is None
    assert settings.input_prefixes == ()
    assert settings.notify_url == ""
    with pytest.raises(ValidationError):
        Settings.from_env({"LLAVA_BATCH_MAX_NEW_TOKENS": ""})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LLAVA_BATCH_BATCH_SIZE", "0"), ("LLAVA_BATCH_MAX_NEW_TOKENS", "x")],
)
def test_an_error_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.from_env({variable: value})
    assert [variable_of(str(e["loc"][0])) for e in caught.value.errors()] == [variable]


def test_reading_the_settings_imports_no_pydantic_settings() -> None:
    code = (
        "import sys\nfrom jobs.settings import load_settings\nload_settings()\n"
        "print('pydantic_settings' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_BATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
