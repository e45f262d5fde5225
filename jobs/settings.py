"""One settings object, read from ``LLAVA_BATCH_*`` environment variables.

Only the CLI and the worker bootstrap read it (``load_settings``); everything else takes values
as arguments. ``Settings(...)`` itself is the values it is given over the defaults and reads no
environment: ``Settings.from_env`` does.
S3 endpoint and credentials are deliberately absent: boto3's own configuration chain
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, profiles) owns them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from jobs.durations import MAX_WINDOW_SECONDS, parse_period, parse_retain, parse_window
from jobs.errors import RequestError
from jobs.input_policy import parse_entries
from model.engine import (
    DEFAULT_GRAMMAR_CACHE_SIZE,
    check_device,
    check_dtype,
    check_quantization,
)

PREFIX = "LLAVA_BATCH_"

# A dead worker's row is kept at least a day: far above any live worker's three heartbeats
# (an hour at most each), so the sweeper never deletes the row of one that runs.
MIN_WORKER_ROWS_KEPT_SECONDS = 86400

# Doorbells per model queue by default: more than the slots of a fleet of a few dozen GPUs,
# and a few kilobytes of Redis.
DEFAULT_DOORBELLS = 64

# LLAVA_BATCH_MAX_INPUT_BYTES's default, also for a request built without settings.
DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024


def _retain_or_none(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    try:
        parse_retain(text, option="LLAVA_BATCH_RETAIN")
    except RequestError as exc:
        raise ValueError(exc.message) from None
    return text.strip()


def _window_or_none(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    try:
        parse_window(text, option="LLAVA_BATCH_COMPLETION_WINDOW")
    except RequestError as exc:
        raise ValueError(exc.message) from None
    return text.strip()


def _kept_for_seconds(text: str) -> int:
    return parse_period(
        text,
        option="LLAVA_BATCH_WORKER_ROWS_KEPT_FOR",
        low=MIN_WORKER_ROWS_KEPT_SECONDS,
        high=MAX_WINDOW_SECONDS,
    )


def _worker_rows_kept_for(text: str) -> str:
    try:
        _kept_for_seconds(text)
    except RequestError as exc:
        raise ValueError(exc.message) from None
    return text.strip()


def _webhook_secret(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    from jobs.delivery.signing import webhook_key  # not at import: jobs.delivery reads the db

    webhook_key(text)  # ValueError: a settings error naming the variable
    return text.strip()


def _networks(entries: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not a network (10.0.0.0/8, fd00::/8, 127.0.0.1)"
            ) from None
    return entries


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def default_home() -> Path:
    return Path.home() / ".llava-batch"


class Settings(BaseModel):
    # A plain model, not pydantic-settings' BaseSettings: importing that (with python-dotenv
    # and argparse) cost every command that reads settings 25-40 ms of its start (issue 27);
    # from_env reads the variables itself.
    # populate_by_name: a field read from a variable of another name (message_size) is still
    # set by its own name in code, Settings(message_size=…). validate_default: the defaults
    # pass the same checks as a variable's value, as under BaseSettings.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)

    home: Path = Field(default_factory=default_home)
    database_url: str = ""
    broker_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = ""
    queue: str = "llava-batch"
    # What a user's input may name (jobs.input_policy): s3://bucket/prefix/ and local folders,
    # separated by commas (a plain list, not JSON). Empty: anything the credentials can read.
    input_prefixes: Annotated[tuple[str, ...], BeforeValidator(parse_entries)] = ()
    # Where a job's results may be delivered (--deliver-to: jobs.delivery.targets), in the same
    # form. Empty: anywhere the credentials (and the sweeper's file permissions) can write.
    output_prefixes: Annotated[tuple[str, ...], BeforeValidator(parse_entries)] = ()

    model: str = "tiny-llava"
    # Checked by the engine's own rules (model.engine), the one place they are written.
    quantization: Annotated[str, AfterValidator(check_quantization)] = "none"
    dtype: Annotated[str, AfterValidator(check_dtype)] = "auto"
    device: Annotated[str, AfterValidator(check_device)] = "auto"

    # Items per batch message (dispatch's size; a job's --batch-size), read from the variable
    # LLAVA_BATCH_BATCH_SIZE. The GPU micro-batch is the worker's own: gpu_batch_size, 0 meaning
    # the engine's suggestion for its device.
    message_size: Annotated[int, Field(ge=1, le=1024, validation_alias=f"{PREFIX}BATCH_SIZE")] = 8
    gpu_batch_size: Annotated[int, Field(ge=0, le=1024)] = 0
    # Messages a worker works on at once, sharing its one model: while one slot's batch
    # generates, the next slot claims, decodes and preprocesses its own, and the one before
    # records its results, so the model does not wait on the database or on decoding.
    worker_slots: Annotated[int, Field(ge=1, le=8)] = 2
    # Threads a worker decodes inputs on, split between its slots (at least one each); 0: its
    # usable cores, at most four per slot. They yield the CPU to the model (workers.helpers).
    decode_threads: Annotated[int, Field(ge=0, le=64)] = 0
    # Compiled JSON grammars (one per distinct extraction schema) a worker keeps, the least
    # recently used dropped first: each costs tens of KB and more, and unbounded the cache grew
    # 210 MB over 3,000 schemas. A schema that comes back after it was dropped is compiled again.
    grammar_cache_size: Annotated[int, Field(ge=1, le=100_000)] = DEFAULT_GRAMMAR_CACHE_SIZE
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 64
    # Whether a submit or run that names neither --reuse nor --no-reuse reuses earlier results
    # (jobs.lifecycle.reuse): an item equal to one an earlier job's model run answered gets a
    # copy of that answer instead of a model run.
    reuse: bool = False
    max_prompt_chars: Annotated[int, Field(ge=1)] = 4000
    max_image_pixels: Annotated[int, Field(ge=1)] = 50_000_000
    max_pdf_pages: Annotated[int, Field(ge=1)] = 50
    # Pixels of one item: the sum over a document's selected pages, checked before rendering.
    max_item_pixels: Annotated[int, Field(ge=1)] = 200_000_000
    # Decoded pixels a worker holds ahead of the model (with at most two model batches of
    # units): two batches of eight 12-MP photos, about 600 MB of RGB.
    max_batch_pixels: Annotated[int, Field(ge=1)] = 200_000_000
    # Inputs larger than this are refused: at submit from the file's stat size (or the S3
    # listing's), by the worker before it reads (input_too_large).
    max_input_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_INPUT_BYTES

    lease_seconds: Annotated[int, Field(ge=5)] = 600
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    sweep_interval_seconds: Annotated[int, Field(ge=1)] = 30
    # A queued item whose message went out this long ago, while the broker queue is empty, has
    # lost its message (e.g. Redis restarted without persistence): the sweeper re-publishes it.
    redispatch_after_seconds: Annotated[int, Field(ge=1)] = 120
    # Doorbells a model's broker queue holds at most (jobs.dispatch): keep it above the
    # fleet's slots (workers times LLAVA_BATCH_WORKER_SLOTS), or some slots wait for a doorbell.
    doorbells: Annotated[int, Field(ge=1, le=100_000)] = DEFAULT_DOORBELLS
    # A job's completion window when its submit names none (--completion-window): 90m, 24h,
    # 7d. Empty: no window, a job waits as long as it takes.
    completion_window: Annotated[str | None, AfterValidator(_window_or_none)] = None
    # How long a job is kept after it ends when its submit names no --retain (30d, 12h); then
    # it is deleted with its results and the inputs no other job uses. Empty: kept until
    # someone deletes it (the default: nothing is deleted that nobody asked to delete).
    retain: Annotated[str | None, AfterValidator(_retain_or_none)] = None
    # Deletion by retention (the sweeper's pass, llava-batch purge) works in transactions of
    # at most this many items, so no statement holds rows for long on a big job.
    purge_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # The time one sweeper pass spends deleting, at most; the rest waits for the next pass.
    purge_seconds_per_pass: Annotated[float, Field(gt=0, le=3600)] = 5
    # The time one sweeper pass spends on deliveries (webhooks, results written), at most.
    delivery_seconds_per_pass: Annotated[float, Field(gt=0, le=3600)] = 30
    # PostgreSQL: how long a statement waits for a row lock (then a retryable error), and how
    # long a session may sit idle inside a transaction (a paused client) before it is ended.
    db_lock_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10
    db_idle_in_transaction_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60
    # A transient storage error (throttling, timeout, S3 down) hands the item back to wait
    # base * 2^n seconds, capped, without spending an attempt; after this many it fails.
    storage_retry_base_seconds: Annotated[float, Field(gt=0, le=3600)] = 5
    storage_retry_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300
    storage_retry_limit: Annotated[int, Field(ge=0, le=1000)] = 12
    # Redis redelivers anything unacked this long; keep it far above the longest batch and
    # let the lease (not the broker) decide who owns an item.
    visibility_timeout_seconds: Annotated[int, Field(ge=1)] = 43_200
    # Each worker, `run` and `sweep` serves Prometheus metrics on the first free port from this
    # one up (several per host take 9464, 9465, …); 0 turns them off. Fixed: this port or the
    # process does not start (metrics_port_taken), so a scrape target names the process it
    # means (one per container, as in docker-compose.yml).
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    metrics_port_fixed: bool = False
    # Each worker writes "alive, serving MODEL" to the database this often; submit and status
    # call a model unserved when no worker did for three periods.
    worker_heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 15
    # The sweeper deletes the row of a worker not seen this long (7d, 30d; 1d to 366d).
    worker_rows_kept_for: Annotated[str, AfterValidator(_worker_rows_kept_for)] = "7d"
    # How long a submit's registration in submits_in_flight lives unrenewed (every commit of
    # its rows renews it, a big submit's heartbeat too, every 200 s): a submit stalled longer
    # fails (submit_stalled), and a producer that died holds up blob collection this long.
    submit_in_flight_seconds: Annotated[int, Field(ge=600, le=7 * 86_400)] = 3600
    # The review page's token (`serve`): asked once by the page, then kept in a cookie. Needed
    # to bind anywhere but loopback; when set, loopback asks for it too.
    serve_token: SecretStr = SecretStr("")

    # Webhooks (jobs.delivery.webhook, docs/webhooks.md). notify_url: where a job's end is
    # POSTed when its submit names no --notify (empty: nowhere). webhook_secret: the Standard
    # Webhooks key every one is signed with, whsec_<base64>; none is sent unsigned, so a
    # --notify without it is refused. Webhooks go to https and public addresses only: plain http
    # to the hosts of webhook_allow_http_hosts, loopback, private and link-local addresses in
    # the networks of webhook_allow_networks (both comma-separated).
    notify_url: str | None = None
    webhook_secret: Annotated[str | None, AfterValidator(_webhook_secret)] = Field(
        default=None, repr=False
    )
    webhook_allow_http_hosts: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = ()
    webhook_allow_networks: Annotated[
        tuple[str, ...], BeforeValidator(_comma_list), AfterValidator(_networks)
    ] = ()
    # One try's connection, sending and answer, all of it at most this long (a receiver that
    # drips its answer is cut off: jobs.delivery.webhook); then the try failed.
    webhook_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> Self:
        """``values`` over the settings' variables in ``environ`` (``os.environ``) over the
        defaults. A variable's text is validated as it is (none is JSON), an empty one too;
        unknown variables are load_settings's to refuse."""
        # Variable names match in any case, as under pydantic-settings (the later of two
        # spellings counts). A value is passed under the variable's own name where the field
        # reads one of another name, so that a validation error's loc names it.
        environ = os.environ if environ is None else environ
        by_name = {name.lower(): value for name, value in environ.items()}
        read: dict[str, str] = {}
        for field, info in cls.model_fields.items():
            key = info.validation_alias if isinstance(info.validation_alias, str) else field
            variable = variable_of(field).lower()
            if variable in by_name and field not in values and key not in values:
                read[key] = by_name[variable]
        return cls.model_validate({**read, **values})

    @property
    def submit_in_flight(self) -> timedelta:
        return timedelta(seconds=self.submit_in_flight_seconds)

    @property
    def retain_seconds(self) -> int | None:
        """The default retention in seconds; None: kept until deleted."""
        return None if self.retain is None else parse_retain(self.retain)

    @property
    def completion_window_seconds(self) -> int | None:
        """The default completion window in seconds; None: no window."""
        return None if self.completion_window is None else parse_window(self.completion_window)

    @property
    def worker_rows_kept_for_seconds(self) -> int:
        return _kept_for_seconds(self.worker_rows_kept_for)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'llava-batch.sqlite3'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home / "blobs")

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"


# Read outside the settings object (before it can be built, or by the test harness only).
OTHER_VARIABLES = frozenset(
    {"LLAVA_BATCH_DEBUG", "LLAVA_BATCH_LOG_LEVEL", "LLAVA_BATCH_TEST_FAULTS"}
)


class UnknownSettingError(ValueError):
    """Raised for an LLAVA_BATCH_* variable that is not a setting (usually a typo)."""


def variable_of(name: str) -> str:
    """The environment variable that sets ``name``: a field of ``Settings``, or the first part
    of a settings validation error's ``loc`` (the variable itself, for a field that reads one of
    another name: ``message_size`` is set by LLAVA_BATCH_BATCH_SIZE)."""
    field = Settings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        return alias
    return name.upper() if name.upper().startswith(PREFIX) else PREFIX + name.upper()


def setting_variables() -> frozenset[str]:
    """The environment variables of the settings, one per field."""
    return frozenset(variable_of(name) for name in Settings.model_fields)


def check_unknown_variables(environ: Mapping[str, str]) -> None:
    known = setting_variables() | OTHER_VARIABLES
    for variable in sorted(environ):
        if variable.startswith(PREFIX) and variable not in known:
            close = difflib.get_close_matches(variable, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UnknownSettingError(f"{variable} is not a llava-batch setting{hint}")


def load_settings() -> Settings:
    # A typo would otherwise be ignored silently and the default used instead.
    check_unknown_variables(os.environ)
    return Settings.from_env(os.environ)
