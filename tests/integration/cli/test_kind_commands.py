"""A kind's commands come from its one declaration: registering a toy kind (its handler in
``KINDS``, its commands in ``COMMANDS``) makes ``submit toy``, ``run toy`` and ``schedule add NAME
toy`` appear with its options (and a submit through them stores its parameters), and removing it
makes them disappear."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from jobs.db import Job, make_session_factory, open_database
from jobs.kinds.caption import Caption, CaptionParams
from jobs.kinds.commands import COMMANDS
from jobs.kinds.options import REQUIRED, KindCommands, Option
from jobs.kinds.registry import KINDS
from jobs.settings import load_settings
from tests.services import free_port
from workers.cli import build_app

CATALOGUE = Path(__file__).resolve().parents[2] / "data" / "catalogue"


class ToyParams(CaptionParams):
    colour: str = "plain"
    shades: int = 1


def _upper(text: str) -> str:
    return text.upper()


class Toy(Caption):
    """A caption that also carries a colour: enough to go through submit."""

    name: ClassVar[str] = "toy"
    params_type = ToyParams  # type: ignore[assignment]


TOY_COMMANDS = KindCommands(
    word="toy",
    does="Toy images",
    submit="Submit a toy job.",
    schedule="Toy the new images under SOURCE.",
    options=(
        Option("colour", str, "The toy's colour.", default=REQUIRED, read=_upper),
        Option("shades", int, "How many shades.", default=1, min=1, flags=("-s", "--shades")),
    ),
)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in [n for n in __import__("os").environ if n.startswith("LLAVA_BATCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLAVA_BATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLAVA_BATCH_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    return CliRunner()


@pytest.fixture
def toy() -> Iterator[None]:
    KINDS["toy"] = Toy()
    COMMANDS["toy"] = TOY_COMMANDS
    try:
        yield
    finally:
        del KINDS["toy"], COMMANDS["toy"]


def _commands(app: typer.Typer, *group: str) -> set[str]:
    """The command words of a group, as click holds them."""
    command = typer.main.get_command(app)
    for word in group:
        command = command.commands[word]  # type: ignore[attr-defined]
    return set(command.commands)  # type: ignore[attr-defined]


GROUPS = (("submit",), ("run",), ("schedule", "add"))


def _help(app: typer.Typer, runner: CliRunner, *words: str) -> str:
    result = runner.invoke(app, [*words, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_registered_kind_gets_three_commands_with_its_options(
    runner: CliRunner, toy: None
) -> None:
    app = build_app()
    for group in GROUPS:
        assert "toy" in _commands(app, *group)
        words = [*group, "nightly"] if group[0] == "schedule" else list(group)
        own = _help(app, runner, *words, "toy")
        assert "--colour" in own and "The toy's colour." in own and "--shades" in own
        assert "--max-new-tokens" in own and "--model" in own  # the family's shared options
    assert "--wait" in _help(app, runner, "submit", "toy")
    assert "--format" in _help(app, runner, "run", "toy")
    assert "--every" in _help(app, runner, "schedule", "add", "nightly", "toy")


def test_a_submit_through_the_generated_command_stores_the_kinds_parameters(
    runner: CliRunner, toy: None
) -> None:
    app = build_app()
    missing = runner.invoke(app, ["submit", "toy", str(CATALOGUE)])
    assert missing.exit_code == 2 and "--colour" in missing.output  # REQUIRED is required

    done = runner.invoke(
        app, ["submit", "toy", str(CATALOGUE), "--colour", "teal", "-s", "3", "--json"]
    )
    assert done.exit_code == 0, done.output
    job_id = json.loads(done.stdout.strip().splitlines()[-1])["job_id"]
    session_factory = make_session_factory(open_database(load_settings()))
    with session_factory() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
    assert job.kind == "toy"
    assert job.params["colour"] == "TEAL" and job.params["shades"] == 3  # read, then typed


def test_without_the_kind_its_commands_are_gone(runner: CliRunner) -> None:
    assert "toy" not in KINDS and "toy" not in COMMANDS
    app = build_app()
    for group in GROUPS:
        assert "toy" not in _commands(app, *group)
    gone = runner.invoke(app, ["submit", "toy", str(CATALOGUE), "--colour", "teal"])
    assert gone.exit_code == 2 and "No such command" in gone.output


def test_every_kind_of_kinds_has_its_commands(runner: CliRunner) -> None:
    app = build_app()
    submit, run, schedule = (_commands(app, *group) for group in GROUPS)
    assert len(submit) == len(run) == len(KINDS)
    for cli in COMMANDS.values():
        assert cli.word in submit and cli.word in run
        assert (cli.word in schedule) == (cli.schedule is not None)


def test_every_kind_has_its_commands_declared_and_nothing_else_has() -> None:
    """``COMMANDS`` is kept apart from ``KINDS`` so that building the app imports no kind: the
    two name the same kinds, in the same order (the order of the commands in the help)."""
    assert list(COMMANDS) == list(KINDS)


def test_every_kind_has_its_docs_page() -> None:
    """A kind is its module, its line in KINDS, its error codes and its page."""
    docs = Path(__file__).resolve().parents[3] / "docs" / "kinds"
    for kind in KINDS.values():
        assert (docs / f"{kind.name}.md").is_file(), kind.name
