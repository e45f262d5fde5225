"""How a kind appears on the command line, declared once in its module.

``jobs.cli.kind_commands`` turns a kind's ``KindCommands`` into ``submit <name>``, ``run <name>``
and ``schedule add <name>``, each with the kind's own options beside the family's shared ones
(``--max-new-tokens``, ``--batch-size``, ``--model``; ``--wait`` for submit, ``--format`` for
run, ``--every`` for schedules). Plain data: the domain knows nothing of typer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option of a kind's commands.

    ``param``: the keyword ``SubmitRequest.of`` takes (a field of the kind's parameters, or a
    request field such as ``input_format``). ``flags``: the option's names (default
    ``--param-name``); a name a command's own option already takes is left to that option.
    ``default``: ``REQUIRED`` for an option that must be given. ``read``: turns what was typed
    into the parameter (a schema file into its JSON), after the command line is parsed.
    """

    param: str
    type: Any
    help: str
    default: Any = None
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    min: int | None = None
    read: Callable[[Any], Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.param.replace("_", "-"),)


REQUIRED: Any = ...


@dataclass(frozen=True)
class KindCommands:
    """A kind on the command line: its command word, what each command says it does (``does``,
    "Caption images", unless a command says more), what its input argument is, and its own
    options.

    ``schedule``: ``None`` when the kind cannot run on a schedule (a file of requests has
    nothing "new under a prefix"). ``one_file``: the input is one file (``submit batch FILE``),
    not any number of sources. ``max_new_tokens_help``: the shared ``--max-new-tokens`` option's
    help, when the kind reads it differently."""

    word: str
    does: str  # "Caption images": the run command says it does that "here and now"
    submit: str
    options: tuple[Option, ...] = ()
    schedule: str | None = None
    run: str | None = None  # None: what ``does`` makes of it
    input_help: str = "Files, directories, s3:// prefixes or .jsonl manifests."
    one_file: bool = False
    max_new_tokens_help: str = "Tokens to generate per item."

    @property
    def run_help(self) -> str:
        return self.run or f"{self.does} here and now: SQLite, local storage, an in-process worker."
