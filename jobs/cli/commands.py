"""Commands written once and added to each app that is built: the app is made by a function
(``jobs.cli.app.build_app``), so the commands generated from ``KINDS`` are made anew with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

Command = Callable[..., Any]


class Commands:
    def __init__(self) -> None:
        self._written: list[tuple[str, Command, dict[str, Any]]] = []

    def command(self, name: str, **options: Any) -> Callable[[Command], Command]:
        """Registers a command; ``options`` go to typer's ``command`` as they are."""

        def register(function: Command) -> Command:
            self._written.append((name, function, options))
            return function

        return register

    def add_to(self, app: typer.Typer) -> typer.Typer:
        for name, function, options in self._written:
            app.command(name, **options)(function)
        return app
