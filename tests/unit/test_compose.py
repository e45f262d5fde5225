"""docker-compose.yml, Dockerfile and .dockerignore agree with the code (no Docker needed).

Compose values are read the way Compose reads them: ``${VAR:-default}`` becomes its default (what
a user who sets nothing gets), ``${VAR:?message}`` (a secret, which has no default) the value
.env.example gives it (what a user who copied it to .env gets), and ``$$`` a literal ``$``.

``data/compose-spec.json`` is the Compose Specification's JSON schema, copied unchanged from
github.com/compose-spec/compose-spec (schema/compose-spec.json at commit 170098ba07d9, June 2026;
Apache-2.0): no PyPI package ships it (compose-spec and compose-pydantic carry bindings and
models, not the schema; docker-compose 1.29.2 carries a 2021 copy and obsolete pins).
"""

from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

import workers.cli
from jobs.settings import Settings, setting_variables, variable_of
from storage.uri import parse_s3_uri

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
PREFIX = "LLAVA_BATCH_"
REQUIRED_SERVICES = {
    "redis",
    "postgres",
    "s3",
    "s3-init",
    "migrate",
    "worker",
    "worker-gpu1",
    "sweeper",
    "flower",
}
WORKERS = ("worker", "worker-gpu1")
ONE_SHOTS = {"s3-init", "migrate"}
LLAVA_SERVICES = ("s3-init", "migrate", *WORKERS, "sweeper", "cli")
# Must be set (${VAR:?message}): compose refuses to start without them, so no deployment runs
# on a password published here.
SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_SECRET_KEY", "FLOWER_PASSWORD"}

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<default>[^}]*)\}")


def env_example() -> dict[str, str]:
    """.env.example's assignments (comments and commented-out lines skipped)."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def interpolate(value: str) -> str:
    """Compose's interpolation with only .env.example's variables set: every ${VAR} carries a
    default or is a secret that .env.example sets."""
    example = env_example()

    def replace(match: re.Match[str]) -> str:
        if match["op"] is None:
            raise AssertionError(f"${{{match['name']}}} has no default; use ${{VAR:-default}}")
        if match["op"] == ":?":
            return example[match["name"]]
        return match["default"]

    def expand(part: str) -> str:
        # A nested default (${A:-${B:-x}}) unfolds one level per pass.
        while (expanded := _VAR.sub(replace, part)) != part:
            part = expanded
        return part

    parts = value.split("$$")  # an escaped dollar is never the start of a variable
    return "$".join(expand(part) for part in parts)


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
    return set(setting_variables())


# -- the compose file -----------------------------------------------------------------------


def test_compose_parses_and_has_the_required_services(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"missing services: {sorted(missing)}"


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema.get("title") == "Compose Specification"
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The validator really checks services: a misspelt key is refused.
    broken = {**compose, "services": {**compose["services"], "redis": {"imagee": "redis:7"}}}
    assert not validator.is_valid(broken)


def _variables(compose_text: str) -> list[re.Match[str]]:
    return [match for part in compose_text.split("$$") for match in _VAR.finditer(part)]


def test_every_variable_has_a_default_but_the_secrets(compose_text: str) -> None:
    for match in _variables(compose_text):
        if match["name"] not in SECRETS:
            assert match["op"] == ":-", f"{match[0]} needs a ${{VAR:-default}} default"


def test_secrets_must_be_set_and_say_where(compose_text: str) -> None:
    """No secret has a default: an unset one stops compose with its message, which names it."""
    used = {match["name"] for match in _variables(compose_text)}
    assert used >= SECRETS
    for match in _variables(compose_text):
        if match["name"] in SECRETS:
            assert match["op"] == ":?", f"{match[0]}: a secret is ${{VAR:?message}}"
            assert match["name"] in match["default"] and ".env.example" in match["default"]
    required = {m["name"] for m in _variables(compose_text) if m["op"] == ":?"}
    assert required == SECRETS
    # .env.example sets exactly the secrets, each to a value a URL can carry (REDIS_PASSWORD).
    example = env_example()
    assert example.keys() == SECRETS
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]+", value) for value in example.values()), example
    # A .env holds real secrets: never in the image, never committed.
    assert ".env" in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_one_build_definition_shared_by_every_service_built_here(
    compose_text: str, services: dict[str, Any]
) -> None:
    assert len(re.findall(r"^\s*build:", compose_text, re.MULTILINE)) == 1
    raw = yaml.safe_load(compose_text)
    shared = resolve(raw["x-llava-image"])
    assert shared["build"]["context"] == "."
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(LLAVA_SERVICES)
    for name in built:
        assert services[name]["build"] == shared["build"], name
        assert services[name]["image"] == shared["image"], name


@pytest.mark.parametrize("name", [*WORKERS, "sweeper"])
def test_metrics_are_served_on_a_fixed_port(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each container has its network to itself: a worker or the sweeper serves on 9464 or does
    not start, so worker:9464 and sweeper:9464 are always the process they name."""
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env_of(services[name]).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    assert (settings.metrics_port, settings.metrics_port_fixed) == (9464, True)


def test_every_llava_batch_variable_is_a_settings_field(compose_text: str) -> None:
    used = set(re.findall(r"\bLLAVA_BATCH_[A-Z0-9_]+\b", compose_text))
    assert {"LLAVA_BATCH_DATABASE_URL", "LLAVA_BATCH_MODEL"} <= used  # the scan itself works
    unknown = used - field_env_names()
    assert not unknown, f"not fields of jobs.settings.Settings: {sorted(unknown)}"


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(v for v in setting_variables() if f"| `{v}` |" not in page)
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_shared_env_anchor_reaches_every_llava_batch_service(
    compose_text: str, services: dict[str, Any]
) -> None:
    raw = yaml.safe_load(compose_text)
    shared = raw.get("x-llava-env")
    assert isinstance(shared, dict) and shared, "the x-llava-env anchor is missing"
    for name in LLAVA_SERVICES:
        env = env_of(services[name])
        for key in shared:
            assert key in env, f"{name} lacks {key} from x-llava-env"


@pytest.mark.parametrize("name", [*WORKERS, "sweeper"])
def test_worker_environment_builds_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    env = env_of(services[name])
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = Settings.from_env()  # raises ValidationError on a bad value

    from_env = {key for key in env if key.startswith(PREFIX)}
    assert {variable_of(name) for name in settings.model_fields_set} == from_env
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
    assert (url.username, url.database) == ("llava", "llava")
    assert url.password == env_example()["POSTGRES_PASSWORD"]


def test_broker_url_points_at_the_redis_service_with_its_password(
    services: dict[str, Any],
) -> None:
    url = env_of(services["worker"])["LLAVA_BATCH_BROKER_URL"]
    broker = urlsplit(url)
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    redis_args = command_of(services["redis"])
    password = redis_args[redis_args.index("--requirepass") + 1]
    assert password and broker.password == password
    assert env_of(services["redis"])["REDISCLI_AUTH"] == password  # the healthcheck logs in
    assert env_of(services["flower"])["CELERY_BROKER_URL"] == url
    for name in LLAVA_SERVICES:
        assert env_of(services[name])["LLAVA_BATCH_BROKER_URL"] == url, name


def test_infrastructure_images_are_pinned_and_published(services: dict[str, Any]) -> None:
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    # MinIO's images left Docker Hub in September 2026: none may come back by accident.
    images = {name: str(service.get("image", "")) for name, service in services.items()}
    assert not [name for name, image in images.items() if "minio" in image], images
    assert re.fullmatch(r"chrislusf/seaweedfs:\d+\.\d+", images["s3"]), images["s3"]
    assert re.fullmatch(r"mher/flower:\d+\.\d+\.\d+", images["flower"]), images["flower"]
    for name, service in services.items():
        if "build" not in service:  # ours is built here; every other image names a version
            tag = images[name].rpartition(":")[2]
            assert ":" in images[name] and tag != "latest", f"{name}: pin {images[name]}"
    volumes = services["postgres"].get("volumes") or []
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in volumes)
    assert any(str(v).endswith(":/data") for v in services["s3"].get("volumes") or [])


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    long_running = [n for n in services if n not in ONE_SHOTS and n != "cli"]
    assert {"redis", "postgres", "s3", *WORKERS, "sweeper", "flower"} <= set(long_running)
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert services[name].get("restart") == "unless-stopped", name
    for name in ONE_SHOTS:
        assert services[name].get("restart") == "no", name


def test_s3_healthcheck_and_port(services: dict[str, Any]) -> None:
    args = command_of(services["s3"])
    assert args[0] == "server" and "-s3" in args and "-ip.bind=0.0.0.0" in args
    port = int(next(a for a in args if a.startswith("-s3.port=")).split("=")[1])
    assert port == 8333
    test = " ".join(services["s3"]["healthcheck"]["test"])
    assert f"http://localhost:{port}/healthz" in test


def worker_args(service: dict[str, Any]) -> list[str]:
    argv = argv_of(service)
    assert argv[:2] == ["llava-batch", "worker"]
    return " ".join(argv[2:]).replace("=", " ").split()


@pytest.mark.parametrize("name", WORKERS)
def test_worker_runs_its_slots_without_sweep_with_events_and_a_node_name(
    services: dict[str, Any], name: str
) -> None:
    worker = services[name]
    args = worker_args(worker)
    # The CLI's own pool (threads, LLAVA_BATCH_WORKER_SLOTS of them sharing the model), not
    # solo, which works on one message at a time and leaves the GPU idle between them.
    assert "--pool" not in args or args[args.index("--pool") + 1] == "threads"
    assert "--no-sweep" in args
    assert "-E" in args or "--events" in args  # Flower sees the tasks
    node = args[args.index("-n") + 1]
    assert node.endswith("@%h"), node  # one node per container: its host name

    # The healthcheck pings exactly this worker's node, by the name it was given.
    check = worker["healthcheck"]
    test = " ".join(check["test"])
    assert "celery -A workers.celery_app inspect ping" in test
    assert f'-d "{node.replace("%h", "$HOSTNAME")}"' in test, test
    assert check.get("start_period"), "the first start downloads the model"

    hf_home = env_of(worker).get("HF_HOME")
    assert hf_home, "the worker needs HF_HOME on a volume"
    assert any(str(v).split(":")[1] == hf_home for v in worker.get("volumes", []))
    assert "HF_TOKEN" in env_of(worker), "gated checkpoints need HF_TOKEN passed through"
    assert "${HF_TOKEN:-}" in COMPOSE.read_text(encoding="utf-8")


def test_one_worker_per_gpu(services: dict[str, Any]) -> None:
    gpus = []
    for name in WORKERS:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        (device,) = devices
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], device
        assert "count" not in device, "count and device_ids exclude each other"
        gpus.append(device["device_ids"])
    assert gpus == [["0"], ["1"]], gpus
    # The first worker starts by default; the second GPU is opt-in.
    assert not services["worker"].get("profiles")
    assert services["worker-gpu1"]["profiles"] == ["multi-gpu"]


def test_flower_is_an_optional_profile(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    auth = env_of(flower)["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"[^:]+:.+", auth), "Flower is reachable: keep a login on it"
    assert any(str(p).startswith("127.0.0.1:") for p in flower.get("ports", []))


def test_start_order(services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep: spec.get("condition") for dep, spec in deps.items()}

    assert conditions("migrate")["postgres"] == "service_healthy"
    assert conditions("s3-init")["s3"] == "service_healthy"
    for name in (*WORKERS, "sweeper", "cli"):
        deps = conditions(name)
        assert deps["migrate"] == "service_completed_successfully", name
        assert deps["s3-init"] == "service_completed_successfully", name
        assert deps["redis"] == "service_healthy", name


def test_sweeper_is_ours_not_celery_beat(services: dict[str, Any], compose_text: str) -> None:
    argv = argv_of(services["sweeper"])
    assert argv[:2] == ["llava-batch", "sweep"] and "--once" not in argv
    for name, service in services.items():
        argv = [*command_of(service), *map(str, service.get("entrypoint") or [])]
        assert "beat" not in argv and "-B" not in argv, f"{name} runs celery beat"


def test_cli_service_is_a_tool(services: dict[str, Any]) -> None:
    cli = services["cli"]
    assert "tools" in cli.get("profiles", [])
    assert argv_of(cli) == ["llava-batch"]


def test_sweeper_healthcheck_reads_the_heartbeat_it_writes(services: dict[str, Any]) -> None:
    sweeper = services["sweeper"]
    argv = argv_of(sweeper)
    heartbeat = argv[argv.index("--heartbeat-file") + 1]
    test = " ".join(sweeper["healthcheck"]["test"])
    assert f"os.path.getmtime('{heartbeat}')" in test, test
    # Older than a few passes: unhealthy (default interval, as the sweeper runs in compose).
    stale = int(re.search(r"> (\d+)\)", test)[1])  # type: ignore[index]
    assert stale >= 3 * Settings().sweep_interval_seconds


@pytest.mark.parametrize("name", ["migrate", *WORKERS, "sweeper"])
def test_service_commands_are_real_cli_commands(services: dict[str, Any], name: str) -> None:
    argv = argv_of(services[name])
    assert argv[0] == "llava-batch"
    # Typer 0.29 vendors its own click: a group is whatever has subcommands.
    command: Any = typer.main.get_command(workers.cli.build_app())
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
    expected = {"migrate": ["db", "upgrade"], "sweeper": ["sweep"]}
    assert path == expected.get(name, ["worker"])


def test_s3_init_creates_the_storage_bucket_idempotently(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs s3-init's own script (the one string after ``python -c``) against moto, twice."""
    from moto import mock_aws

    init = services["s3-init"]
    assert init["entrypoint"] == ["python", "-c"]
    (script,) = command_of(init)
    env = env_of(init)
    bucket, _ = parse_s3_uri(env["LLAVA_BATCH_STORAGE_URL"])
    assert bucket == "llava-batch"
    monkeypatch.setenv("LLAVA_BATCH_STORAGE_URL", env["LLAVA_BATCH_STORAGE_URL"])
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)  # moto, not the s3 service
    with mock_aws():
        import boto3

        exec(compile(script, "s3-init", "exec"), {})  # the compose file's own script
        exec(compile(script, "s3-init", "exec"), {})  # a restart: no error
        names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert names == [bucket]
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"created bucket {bucket}"
    # us-east-1 answers a repeated CreateBucket with 200 (moto, AWS); others with an error code
    # that the script treats as done.
    assert second in (f"created bucket {bucket}", f"bucket exists {bucket}")


def test_s3_goes_through_boto3_variables_to_the_s3_service(services: dict[str, Any]) -> None:
    s3 = services["s3"]
    args = command_of(s3)
    api_port = int(next(a for a in args if a.startswith("-s3.port=")).split("=")[1])
    s3_env = env_of(s3)
    for name in LLAVA_SERVICES:
        env = env_of(services[name])
        endpoint = urlsplit(env.get("AWS_ENDPOINT_URL_S3", ""))
        assert (endpoint.hostname, endpoint.port) == ("s3", api_port), (name, endpoint)
        assert env["AWS_ACCESS_KEY_ID"] == s3_env["AWS_ACCESS_KEY_ID"]
        assert env["AWS_SECRET_ACCESS_KEY"] == s3_env["AWS_SECRET_ACCESS_KEY"]
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
        ours = [k for k in env if ("S3" in k or "ENDPOINT" in k) and not k.startswith("AWS_")]
        assert not ours, f"{name}: S3 settings outside boto3's variables: {ours}"


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


def test_image_needs_no_c_compiler() -> None:
    """Constrained decoding (llguidance) computes masks in Rust and applies them with plain torch
    operations: nothing in the product JIT-compiles (no triton kernel, no ``torch.compile``, not
    ``llguidance.torch``, whose helper is a ``torch.compile`` function), so the image carries no
    compiler."""
    runs = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    installs = [r for r in runs if "apt-get install" in r]
    assert not any(re.search(r"\b(gcc|g\+\+|clang|build-essential)\b", r) for r in installs)
    for package in ("model", "workers", "jobs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                    names += [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Attribute) and node.attr == "compile":
                    names = [f"{ast.unparse(node.value)}.compile"]
                jit = [n for n in names if n.split(".")[0] == "triton"]
                jit += [n for n in names if n in ("llguidance.torch", "torch.compile")]
                assert not jit, f"{path.relative_to(ROOT)}:{node.lineno} uses {jit[0]}"


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
