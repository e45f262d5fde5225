"""docker-compose.yml, Dockerfile and .dockerignore agree with the code (no Docker needed).

Compose values are read the way Compose reads them: ``${VAR:-default}`` becomes its default (what
a user without a .env file gets) and ``$$`` a literal ``$``.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

import workers.cli
from jobs.settings import Settings
from storage.uri import parse_s3_uri

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PREFIX = "LLAVA_BATCH_"
REQUIRED_SERVICES = {"redis", "postgres", "minio", "minio-init", "migrate", "worker", "sweeper"}
LONG_RUNNING = ("worker", "sweeper")

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?-)?(?P<default>[^}]*)\}")


def interpolate(value: str) -> str:
    """Compose's interpolation with no variables set: every ${VAR} must carry a default."""

    def replace(match: re.Match[str]) -> str:
        if match["op"] is None:
            raise AssertionError(f"${{{match['name']}}} has no default; use ${{VAR:-default}}")
        return match["default"]

    parts = value.split("$$")  # an escaped dollar is never the start of a variable
    return "$".join(_VAR.sub(replace, part) for part in parts)


def resolve(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [resolve(item) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value) for key, value in node.items()}
    return node


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = yaml.safe_load(compose_text)  # the safe loader resolves anchors and << merges
    assert isinstance(data, dict)
    return resolve(data)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services mapping"
    return found


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def image_entrypoint() -> list[str]:
    entrypoints = [rest for keyword, rest in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])  # exec form; the last one wins
    assert isinstance(entrypoint, list)
    return entrypoint


def argv_of(service: dict[str, Any]) -> list[str]:
    """The full argv a llava-batch service runs: the image's ENTRYPOINT plus its command."""
    assert "entrypoint" not in service, "llava-batch services keep the image's ENTRYPOINT"
    assert "build" in service or "image" in service
    return image_entrypoint() + command_of(service)


def field_env_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


# -- the compose file -----------------------------------------------------------------------


def test_compose_parses_and_has_the_required_services(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_variable_has_a_default(compose_text: str) -> None:
    for part in compose_text.split("$$"):
        for match in _VAR.finditer(part):
            assert match["op"] == ":-", f"{match[0]} needs a ${{VAR:-default}} default"


def test_every_llava_batch_variable_is_a_settings_field(compose_text: str) -> None:
    used = set(re.findall(r"\bLLAVA_BATCH_[A-Z0-9_]+\b", compose_text))
    assert {"LLAVA_BATCH_DATABASE_URL", "LLAVA_BATCH_MODEL"} <= used  # the scan itself works
    unknown = used - field_env_names()
    assert not unknown, f"not fields of jobs.settings.Settings: {sorted(unknown)}"


def test_shared_env_anchor_reaches_every_llava_batch_service(
    compose_text: str, services: dict[str, Any]
) -> None:
    raw = yaml.safe_load(compose_text)
    shared = raw.get("x-llava-env")
    assert isinstance(shared, dict) and shared, "the x-llava-env anchor is missing"
    for name in ("migrate", "worker", "sweeper", "cli"):
        env = env_of(services[name])
        for key in shared:
            assert key in env, f"{name} lacks {key} from x-llava-env"


def test_worker_environment_builds_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services["worker"])
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = Settings()  # raises ValidationError on a bad value

    from_env = {key for key in env if key.startswith(PREFIX)}
    assert {PREFIX + name.upper() for name in settings.model_fields_set} == from_env
    assert settings.model == "llava-hf/llava-1.5-7b-hf"
    assert "${LLAVA_BATCH_MODEL:-llava-hf/llava-1.5-7b-hf}" in COMPOSE.read_text(encoding="utf-8")
    assert str(settings.home) == "/data"


def test_database_url_points_at_the_postgres_service(services: dict[str, Any]) -> None:
    url = make_url(env_of(services["worker"])["LLAVA_BATCH_DATABASE_URL"])
    pg = env_of(services["postgres"])
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres" and (url.port or 5432) == 5432
    assert url.username == pg["POSTGRES_USER"]
    assert url.password == pg["POSTGRES_PASSWORD"]
    assert url.database == pg["POSTGRES_DB"]
    assert (url.username, url.password, url.database) == ("llava", "llava", "llava")


def test_broker_url_points_at_the_redis_service(services: dict[str, Any]) -> None:
    broker = urlsplit(env_of(services["worker"])["LLAVA_BATCH_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)


def test_infrastructure_images_and_healthchecks(services: dict[str, Any]) -> None:
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["minio-init"]["image"].startswith("minio/mc")
    for name in ("redis", "postgres", "minio"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    volumes = services["postgres"].get("volumes") or []
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in volumes)
    assert "--console-address" in command_of(services["minio"])


def test_worker_runs_solo_without_sweep_on_an_nvidia_gpu(services: dict[str, Any]) -> None:
    worker = services["worker"]
    argv = argv_of(worker)
    assert argv[:2] == ["llava-batch", "worker"]
    args = " ".join(argv[2:]).replace("=", " ").split()
    assert "--pool" in args and args[args.index("--pool") + 1] == "solo"
    assert "--no-sweep" in args

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices

    hf_home = env_of(worker).get("HF_HOME")
    assert hf_home, "the worker needs HF_HOME on a volume"
    assert any(str(v).split(":")[1] == hf_home for v in worker.get("volumes", []))


def test_start_order(services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep: spec.get("condition") for dep, spec in deps.items()}

    assert conditions("migrate")["postgres"] == "service_healthy"
    assert conditions("minio-init")["minio"] == "service_healthy"
    worker = conditions("worker")
    assert worker["migrate"] == "service_completed_successfully"
    assert worker["minio-init"] == "service_completed_successfully"
    assert worker["redis"] == "service_healthy"
    assert conditions("sweeper")["migrate"] == "service_completed_successfully"


def test_sweeper_is_ours_not_celery_beat(services: dict[str, Any], compose_text: str) -> None:
    assert argv_of(services["sweeper"]) == ["llava-batch", "sweep"]
    for name, service in services.items():
        argv = [*command_of(service), *map(str, service.get("entrypoint") or [])]
        assert "beat" not in argv and "-B" not in argv, f"{name} runs celery beat"


def test_cli_service_is_a_tool(services: dict[str, Any]) -> None:
    cli = services["cli"]
    assert "tools" in cli.get("profiles", [])
    assert argv_of(cli) == ["llava-batch"]


@pytest.mark.parametrize("name", ["migrate", "worker", "sweeper"])
def test_service_commands_are_real_cli_commands(services: dict[str, Any], name: str) -> None:
    argv = argv_of(services[name])
    assert argv[0] == "llava-batch"
    # Typer 0.29 vendors its own click: a group is whatever has subcommands.
    command: Any = typer.main.get_command(workers.cli.app)
    assert "worker" in command.commands  # the walk below really sees the CLI's commands
    path: list[str] = []
    rest = argv[1:]
    while getattr(command, "commands", None) is not None:
        assert rest, f"{name}: {' '.join(path)} needs a subcommand"
        sub = command.commands.get(rest[0])
        assert sub is not None, f"{name}: no command {' '.join([*path, rest[0]])!r}"
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    # Parses the options without running anything: an unknown option raises.
    command.make_context(" ".join(["llava-batch", *path]), list(rest))
    expected = {"migrate": ["db", "upgrade"], "worker": ["worker"], "sweeper": ["sweep"]}
    assert path == expected[name]


def test_storage_bucket_is_the_one_minio_init_creates(services: dict[str, Any]) -> None:
    bucket, _ = parse_s3_uri(env_of(services["worker"])["LLAVA_BATCH_STORAGE_URL"])
    init = " ".join(command_of(services["minio-init"]))
    created = re.findall(r"\bmc\s+mb\b[^&;|]*?\s\w+/([a-z0-9][a-z0-9.-]+)", init)
    assert created == [bucket] == ["llava-batch"], (created, bucket)


def test_s3_goes_through_boto3_variables_to_minio(services: dict[str, Any]) -> None:
    minio = services["minio"]
    args = command_of(minio)
    api_port = (
        int(args[args.index("--address") + 1].rsplit(":", 1)[1]) if "--address" in args else 9000
    )
    minio_env = env_of(minio)
    for name in ("migrate", "worker", "sweeper", "cli"):
        env = env_of(services[name])
        endpoint = urlsplit(env.get("AWS_ENDPOINT_URL_S3", ""))
        assert (endpoint.hostname, endpoint.port) == ("minio", api_port), (name, endpoint)
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
        ours = [k for k in env if ("S3" in k or "ENDPOINT" in k) and not k.startswith("AWS_")]
        assert not ours, f"{name}: S3 settings outside boto3's variables: {ours}"
    init = " ".join(command_of(services["minio-init"]))
    assert f"http://minio:{api_port}" in init


# -- the image ------------------------------------------------------------------------------


def test_dockerfile_pins_torch_to_the_tested_version() -> None:
    instructions = dockerfile_instructions()
    assert [rest for kw, rest in instructions if kw == "FROM"] == ["python:3.11-slim"]
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    spec = args.get("TORCH_SPEC", "").strip('"')
    match = re.fullmatch(r"torch==(\d+\.\d+\.\d+)", spec)
    assert match, f"TORCH_SPEC must pin an exact torch version, got {spec!r}"
    assert match[1] == version("torch").split("+")[0], "the image pins another torch than CI tests"
    installs = [rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest]
    assert any('"$TORCH_SPEC"' in r for r in installs), "TORCH_SPEC is never installed"
    assert any('".[gpu]"' in r for r in installs), "the [gpu] extras are not installed"


def test_image_runs_llava_batch_as_a_non_root_user() -> None:
    assert image_entrypoint() == ["llava-batch"]
    users = [rest for kw, rest in dockerfile_instructions() if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_console_script_and_gpu_extras_are_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    target = project["scripts"]["llava-batch"]
    module, _, attr = target.partition(":")
    assert (module, attr) == ("workers.cli", "main")
    assert callable(getattr(workers.cli, attr))
    gpu = " ".join(project["optional-dependencies"]["gpu"])
    assert "bitsandbytes" in gpu and "accelerate" in gpu


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git"} <= patterns
    assert {".mypy_cache", ".pytest_cache", ".ruff_cache"} <= patterns
    assert patterns & {"__pycache__", "**/__pycache__"}
