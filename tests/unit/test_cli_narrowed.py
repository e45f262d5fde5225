"""A command's start turns only that command into click's (``jobs.cli.errors.narrowed``):
typer converts every registered command at each start, about 30 ms of ours, a tenth of
``jobs``. Anything that is not a command's name keeps them all, so the root's help and its
"No such command" (with its suggestion) still list every one."""

from __future__ import annotations

import typer.core
import typer.main

from jobs.cli.errors import narrowed
from workers.cli import build_app


def _converted(argv: list[str]) -> set[str]:
    group = typer.main.get_command(narrowed(build_app(), argv))
    assert isinstance(group, typer.core.TyperGroup)
    return set(group.commands)


def test_a_command_or_group_named_first_is_the_only_one_converted() -> None:
    assert _converted(["jobs", "--json"]) == {"jobs"}
    assert _converted(["status", "abc"]) == {"status"}
    assert _converted(["submit", "caption", "photos/"]) == {"submit"}
    assert _converted(["run", "--resume", "abc"]) == {"run"}


def test_no_command_an_option_or_a_misspelt_name_keeps_every_command() -> None:
    app = build_app()
    every = {info.name for info in [*app.registered_commands, *app.registered_groups]}
    assert {"jobs", "status", "submit", "run", "worker", "serve"} <= every
    for argv in ([], ["--help"], ["--version"], ["jobz"], ["--", "jobs"]):
        assert _converted(argv) == every, argv
