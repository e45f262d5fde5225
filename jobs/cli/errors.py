"""The CLI's one error boundary: whatever reaches it leaves as one line on stderr,
``error: <sentence> [<code>]``, with an exit status from ``jobs.errors.ExitCode`` (the one
table). No traceback reaches the user unless ``LLAVA_BATCH_DEBUG`` asks for it.

Usage errors (an unknown flag or command, a missing argument or value, a bare command) show the
usage first and exit ``invalid_request`` (2). Only a genuine bug exits ``internal_error`` (1).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

import typer

# typer >= 0.26 vendors click as ``typer._click``: its parser raises these classes, not the
# ``click`` package's (which celery installs too, so catching ``click.*`` caught nothing and
# the first typo was an "internal error"). pyproject pins typer to the range this holds for.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from jobs.cli.views import err, first_line
from jobs.errors import ExitCode, JobsError

if TYPE_CHECKING:
    from model.errors import SchemaError
    from storage.errors import StorageError

PROG = "llava-batch"


class OutputClosedError(Exception):
    """The reader of stdout went away (``llava-batch results JOB | head``): the CLI exits
    ``output_closed`` (141) without a word, as a Unix filter does.

    Raised by the CLI's stdout in place of ``BrokenPipeError``, which typer and rich would
    each turn into a silent exit 1. (Restoring SIGPIPE's default instead would also kill the
    CLI silently when a database or broker socket breaks.)"""


@dataclass(frozen=True)
class Failure:
    """What the user sees of an error: one sentence, a stable code, an exit status."""

    message: str
    code: str
    exit_code: ExitCode


def _loaded(module: str, name: str) -> type[BaseException] | None:
    """The exception class ``module.name`` if that module was imported, else None: an error of
    a module never imported cannot have been raised, and importing the settings or SQLAlchemy
    here would undo the light start of ``--help`` and of a mistyped command (``storage``'s
    package imports all of it, its S3 store too)."""
    loaded = sys.modules.get(module)
    return None if loaded is None else cast(type[BaseException], getattr(loaded, name))


def _is(exc: BaseException, module: str, name: str) -> bool:
    cls = _loaded(module, name)
    return cls is not None and isinstance(exc, cls)


def describe(exc: BaseException) -> Failure:
    """The one mapping from an exception that reached the CLI to what the user sees."""
    if isinstance(exc, JobsError):
        return Failure(exc.message, exc.code, exc.exit_code)  # typed ExitCode: from the table
    if isinstance(exc, NoArgsIsHelpError):
        return Failure(
            "a command is missing: see the list above", "usage_error", ExitCode.invalid_request
        )
    if isinstance(exc, ClickException):
        return Failure(exc.format_message(), "usage_error", ExitCode.invalid_request)
    if _is(exc, "model.errors", "ModelLoadError"):
        return Failure(
            f"the model cannot be loaded: {first_line(exc)}",
            "model_load_error",
            ExitCode.model_load_error,
        )
    if _is(exc, "model.errors", "SchemaError"):
        schema_error = cast("SchemaError", exc)
        return Failure(schema_error.message, schema_error.code, ExitCode.invalid_request)
    if _is(exc, "storage.errors", "StorageError"):
        return Failure(first_line(exc), cast("StorageError", exc).code, ExitCode.invalid_request)
    if _is(exc, "pydantic", "ValidationError"):
        return Failure(_settings_problems(exc), "invalid_settings", ExitCode.invalid_request)
    if _is(exc, "jobs.settings", "UnknownSettingError"):
        return Failure(f"bad configuration: {exc}", "invalid_settings", ExitCode.invalid_request)
    if _is(exc, "sqlalchemy.exc", "OperationalError"):
        return Failure(
            f"the database is unreachable: {first_line(getattr(exc, 'orig', exc))}",
            "database_unavailable",
            ExitCode.database_unavailable,
        )
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", "interrupted", ExitCode.interrupted)
    if isinstance(exc, OutputClosedError):
        return Failure(
            "the output was closed by its reader", "output_closed", ExitCode.output_closed
        )
    if isinstance(exc, typer.Abort):
        return Failure("aborted", "interrupted", ExitCode.interrupted)
    return Failure(
        f"internal error: {type(exc).__name__}: {first_line(exc)} "
        "(set LLAVA_BATCH_DEBUG=1 for a traceback)",
        "internal_error",
        ExitCode.internal_error,
    )


def run_cli(app: typer.Typer, args: Sequence[str] | None = None) -> NoReturn:
    """Runs ``app`` as ``llava-batch`` and exits; the console script's whole body."""
    # pydantic looks for plugins in every installed distribution's entry points when it builds
    # its first model (about 3 % of a ``jobs``); ours are internal, and typer already builds
    # its own validators with plugins off. A user who sets the variable, even empty, decides.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    logging.basicConfig(
        level=os.environ.get("LLAVA_BATCH_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    argv = list(sys.argv[1:] if args is None else args)
    command = typer.main.get_command(narrowed(app, argv))
    sys.stdout = cast(TextIO, _GuardedStdout(sys.stdout))
    try:
        code = command.main(args=argv, prog_name=PROG, standalone_mode=False)
        sys.stdout.flush()
    except (Exception, KeyboardInterrupt) as exc:
        if (
            os.environ.get("LLAVA_BATCH_DEBUG")
            and describe(exc).exit_code is ExitCode.internal_error
        ):
            raise
        fail(exc)
    if code == ExitCode.interrupted:  # typer turns Ctrl-C into Exit(130), silently
        fail(KeyboardInterrupt())
    _exit(code if isinstance(code, int) else ExitCode.ok)


def _exit(code: int) -> NoReturn:
    # The interpreter's shutdown runs the cyclic collector over every object start-up made
    # (typer's, pydantic's, rich's commands and schemas): 50 to 60 ms of a 0.3 s ``jobs`` here.
    # Frozen, they are left for the process's end to free; exit handlers, the last flushes and
    # the wait for worker threads still run as before. What that last collection also did, and
    # must still be done, is close the database's pooled connections (they live in cycles).
    db = sys.modules.get("jobs.db")  # loaded only by a command that opened the database
    if db is not None:
        db.dispose_engines()
    gc.freeze()
    sys.exit(code)


def narrowed(app: typer.Typer, argv: Sequence[str]) -> typer.Typer:
    """``app`` keeping only the command or group that ``argv``'s first word names, when it
    names one: typer turns every registered command into click's at each start (about 30 ms
    for ours, a tenth of ``jobs``), and the command asked for needs only its own. Any other
    first word (none, ``--help``, ``--version``, a misspelt command) keeps every command, so
    the root's help and its "No such command" list them all."""
    if not argv:
        return app
    commands = [info for info in app.registered_commands if info.name == argv[0]]
    groups = [info for info in app.registered_groups if info.name == argv[0]]
    if len(commands) + len(groups) != 1:
        return app
    app.registered_commands, app.registered_groups = commands, groups
    return app


def fail(exc: BaseException, *, now: bool = False) -> NoReturn:
    """Prints the one-line error and exits with its code. ``now``: skip the interpreter's
    shutdown, for a process whose threads are still inside native code (a model mid-batch)
    and cannot be stopped; Python 3.11 ends such daemon threads in a way C++ code aborts on."""
    failure = describe(exc)
    if isinstance(exc, OutputClosedError):
        # A filter whose reader has gone (``| head``) stops without a word, as ``cat`` does:
        # the reader has what it asked for. Nothing more can reach it; pointing stdout at
        # /dev/null keeps the interpreter's last flush quiet.
        _silence_stdout()
    else:
        if isinstance(exc, UsageError):
            _show_usage(exc)
        err.print(f"error: {failure.message} [{failure.code}]", markup=False)
    if now:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(failure.exit_code))
    _exit(int(failure.exit_code))


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    except (OSError, ValueError):  # no file descriptor behind stdout: nothing to flush there
        pass
    finally:
        os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def _show_usage(exc: UsageError) -> None:
    if isinstance(exc, NoArgsIsHelpError):
        # The help itself: typer's rich help prints while the error is built; plain help is
        # the error's message.
        if exc.message and exc.message != "None":
            err.print(exc.message, markup=False)
        return
    if exc.ctx is None:
        return
    err.print(exc.ctx.get_usage(), markup=False)
    if exc.ctx.command.get_help_option(exc.ctx) is not None:
        err.print(f"Try '{exc.ctx.command_path} --help' for help.", markup=False)


def _settings_problems(exc: Any) -> str:
    """``exc``: a pydantic ``ValidationError`` of the settings."""
    from jobs.settings import variable_of

    problems = [f"{variable_of(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors()]
    return "bad configuration: " + "; ".join(problems)


class _GuardedStdout:
    """stdout, with a closed pipe raised as ``OutputClosedError``; all else passes through."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError as exc:
            raise OutputClosedError() from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as exc:
            raise OutputClosedError() from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
