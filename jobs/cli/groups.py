"""The command groups of ``llava-batch`` (``Group``: typer's, with one start-up cost removed)."""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup, TyperOption


class Group(TyperGroup):
    """typer's group, whose ``--help`` flag reads False rather than None when it is not given.

    typer (0.29) coerces every value but a bool through a pydantic ``TypeAdapter``, built on
    first use: a group's unused ``--help`` (None) made every command below a group, even
    ``submit --help``, import pydantic and build an adapter (about 60 ms). False is what the
    flag means when absent, and its callback does nothing with it."""

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option
