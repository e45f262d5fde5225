"""``submit <kind>``, ``run <kind>`` and ``schedule add <kind>``, made for every entry of
``COMMANDS`` from the options the kind declares once (``jobs.kinds.commands``).

A command here is a function whose signature is built from the kind's options and the family's
shared ones, so typer reads it as it reads a written one: the same types, checks and help.
What the command does is the family's ``action``: it gets the kind, the values of the shared
options, and the kind's parameters (each option's ``read`` applied). The kind
(``jobs.kinds.registry``: pydantic, the model code) is imported when the command runs, not when
it is made, so building the app stays light.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.cli.context import Context
from jobs.cli.options import (
    BatchSize,
    CompletionWindow,
    DeliverFormat,
    DeliverTo,
    MaxNew,
    ModelName,
    Notify,
    Priority,
    Retain,
    build_request,
)
from jobs.kinds.commands import COMMANDS
from jobs.kinds.options import REQUIRED, KindCommands, Option

if TYPE_CHECKING:
    from jobs.kinds.base import Kind
    from jobs.submit.request import SubmitRequest

KindAction = Callable[["Kind[Any]", dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class Family:
    """One command group's way of making a kind's command: its help text for the kind, the
    input parameter(s) before the kind's options, its shared options after them, and what the
    command does."""

    help_of: Callable[[KindCommands], str | None]  # None: the kind has no command here
    first: Callable[[KindCommands], Sequence[inspect.Parameter]]
    shared: Sequence[inspect.Parameter]
    action: KindAction


def parameter(
    name: str, annotation: Any, default: Any = inspect.Parameter.empty
) -> inspect.Parameter:
    """A keyword parameter of a generated command (``Annotated[type, typer.Option(…)]``)."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def shared_parameters(*own: inspect.Parameter) -> tuple[inspect.Parameter, ...]:
    """A family's shared options: the token budget and message size, the family's ``own``,
    then how the job shares the fleet, then ``--model``."""
    return (
        parameter("max_new_tokens", MaxNew, None),
        parameter("batch_size", BatchSize, None),
        *own,
        parameter("priority", Priority, None),
        parameter("completion_window", CompletionWindow, None),
        parameter("retain", Retain, None),
        parameter("notify", Notify, None),
        parameter("model", ModelName, None),
        # Where the results go when the job ends (jobs.delivery.targets).
        parameter("deliver_to", DeliverTo, None),
        parameter("deliver_format", DeliverFormat, None),
    )


def sources_parameter(cli: KindCommands) -> inspect.Parameter:
    """The kind's input: any number of sources, or one file (``submit batch FILE``)."""
    if cli.one_file:
        return parameter("file", Annotated[str, typer.Argument(help=cli.input_help)])
    return parameter("sources", Annotated[list[str], typer.Argument(help=cli.input_help)])


def request_for(
    ctx: Context,
    kind: Kind[Any],
    values: Mapping[str, Any],
    params: Mapping[str, Any],
    **request: Any,
) -> SubmitRequest:
    """The request a kind's command was given: its input, the shared options (``request``: the
    family's own, such as ``name=``), and the kind's parameters."""
    return build_request(
        ctx,
        kind.name,
        sources_of(values),
        values["max_new_tokens"],
        values["batch_size"],
        model=values["model"],
        priority=values["priority"],
        completion_window=values["completion_window"],
        retain=values["retain"],
        deliver_to=values["deliver_to"],
        deliver_format=values["deliver_format"],
        notify=values["notify"],
        **request,
        **params,
    )


def sources_of(values: Mapping[str, Any]) -> list[str]:
    """What ``sources_parameter`` read, as a list."""
    for one in ("file", "source"):  # submit batch FILE; schedule add NAME KIND SOURCE
        if one in values:
            return [values[one]]
    return list(values["sources"])


def add_kind_commands(group: typer.Typer, family: Family) -> None:
    """One command in ``group`` for each kind of ``COMMANDS`` that has one in this family."""
    for name, cli in COMMANDS.items():
        doc = family.help_of(cli)
        if doc is not None:
            group.command(cli.word)(_command(name, cli, doc, family))


def _command(name: str, cli: KindCommands, doc: str, family: Family) -> Callable[..., None]:
    taken = {flag for p in family.shared for flag in _flags_of(p)}
    own = [_option_parameter(option, taken) for option in cli.options]
    shared = [_max_new_tokens_help(p, cli) for p in family.shared]
    params = [*family.first(cli), *own, *shared]
    kind_params = {option.param: option for option in cli.options}

    def command(**values: Any) -> None:
        from jobs.kinds.registry import get_kind

        given = {param: values.pop(param) for param in kind_params}
        family.action(get_kind(name), values, _read(given, kind_params))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = command.__qualname__ = f"{name}_command"
    return command


def _read(given: dict[str, Any], options: Mapping[str, Option]) -> dict[str, Any]:
    read = {}
    for name, value in given.items():
        reader = options[name].read
        read[name] = reader(value) if reader is not None and value is not None else value
    return read


def _option_parameter(option: Option, taken: set[str]) -> inspect.Parameter:
    names = [name for name in option.names if name not in taken]
    info = typer.Option(*names, help=option.help, metavar=option.metavar, min=option.min)
    default = inspect.Parameter.empty if option.default is REQUIRED else option.default
    return parameter(option.param, Annotated[option.type, info], default)


def _flags_of(param: inspect.Parameter) -> tuple[str, ...]:
    """The names an ``Annotated[…, typer.Option("--x", …)]`` option takes (in that form typer
    keeps the first name where a default would go)."""
    for info in getattr(param.annotation, "__metadata__", ()):
        if isinstance(info, typer.models.OptionInfo):
            first = (info.default,) if isinstance(info.default, str) else ()
            return (*first, *(info.param_decls or ()))
    return ()


def _max_new_tokens_help(param: inspect.Parameter, cli: KindCommands) -> inspect.Parameter:
    """The shared ``--max-new-tokens``, with the help the kind gives it."""
    if param.name != "max_new_tokens":
        return param
    return param.replace(
        annotation=Annotated[
            int | None,
            typer.Option("--max-new-tokens", min=1, help=cli.max_new_tokens_help),
        ]
    )
