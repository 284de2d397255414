"""`gwc` imports a command's module only when that command runs (``LazyGroup``), and `gwc --help`
lists the commands from a table of one-line helps: the table must name every command, under its
own name, with its own first sentence, so that the listing reads as if every module were loaded."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import gwc.compiler.cli as cli
from gwc.compiler.cli import COMMANDS, main

CONTEXT = click.Context(main, info_name="gwc")


def _loaded(name: str) -> click.Command:
    command = main.get_command(CONTEXT, name)
    assert command is not None, name
    return command


def _reachable(command: click.Command) -> list[click.Command]:
    subcommands = command.commands.values() if isinstance(command, click.Group) else ()
    return [command, *(c for sub in subcommands for c in _reachable(sub))]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_gives_each_command_its_own_name_and_first_sentence(name: str) -> None:
    command = _loaded(name)
    assert command.name == name
    assert COMMANDS[name][1] == command.get_short_help_str(limit=10_000)


def test_every_command_of_the_cli_modules_is_in_the_table() -> None:
    listed = {id(c) for name in COMMANDS for c in _reachable(_loaded(name))}
    defined = [f"{module.name}.{attribute}"
               for module in pkgutil.iter_modules(cli.__path__, f"{cli.__name__}.")
               for attribute, value in vars(importlib.import_module(module.name)).items()
               if isinstance(value, click.Command) and id(value) not in listed]
    assert defined == [], "add these to COMMANDS in gwc/compiler/cli/__init__.py"


@pytest.mark.parametrize("width", [60, 80, 120])
def test_help_lists_the_commands_as_click_would_from_the_loaded_commands(width: int) -> None:
    lazy, loaded = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
    main.format_commands(CONTEXT, lazy)
    click.Group.format_commands(main, CONTEXT, loaded)  # every command imported, its help shortened
    assert lazy.getvalue() == loaded.getvalue()
    assert lazy.getvalue().count("\n") == len(COMMANDS) + 1  # the heading, one line per command


def test_help_imports_no_command_module() -> None:
    code = ("import sys\nfrom gwc.compiler.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('gwc.compiler.cli.')), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "validate" in proc.stdout and proc.stderr.strip() == "[]"


def test_an_unknown_command_is_refused_as_before() -> None:
    result = CliRunner().invoke(main, ["valdiate"])
    assert result.exit_code == 2 and "No such command 'valdiate'." in result.output
