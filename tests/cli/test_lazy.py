"""The ``vdisk`` group imports a command's module only when that command
runs (cli/main.py's COMMANDS table), and what it shows without importing
them - the help's command list, the completion of command names - is what
the commands themselves would show."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from vdisk.cli.main import COMMANDS, main

from .util import run, subcommands

# What every command imports: the group, its errors, and what commands share.
SHARED = {"vdisk.cli", "vdisk.cli.main", "vdisk.cli.failures", "vdisk.cli.common"}


def _eager() -> click.Group:
    """The same group with its commands registered up front, as click does by default."""
    return click.Group("vdisk", commands=dict(subcommands(main)), params=main.params, help=main.help,
                       context_settings=main.context_settings, invoke_without_command=True)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_line_is_the_commands_own(name):
    cmd = main.get_command(click.Context(main), name)
    assert cmd is not None and cmd.name == name and not cmd.hidden
    assert COMMANDS[name][1] == cmd.get_short_help_str(limit=10_000), \
        f"cli/main.py COMMANDS[{name!r}]: make the line the first sentence of the command's docstring"


def test_the_table_holds_every_command_once():
    targets = [target for target, _line in COMMANDS.values()]
    assert len(set(targets)) == len(targets)
    assert main.list_commands(click.Context(main)) == sorted(COMMANDS)


@pytest.mark.parametrize("columns", [40, 60, 80, 100, 200])
def test_the_help_is_what_click_would_print(columns):
    env = {"COLUMNS": str(columns)}
    eager = CliRunner(catch_exceptions=False).invoke(_eager(), ["--help"], env=env)
    assert eager.exit_code == 0 and "Commands:" in eager.stdout
    assert run("--help", env=env).stdout == eager.stdout


@pytest.mark.parametrize("incomplete", ["", "s", "sn", "co", "x"])
def test_command_names_complete_as_click_would(incomplete):
    def items(group):
        return [(i.value, i.help) for i in group.shell_complete(click.Context(group), incomplete)]

    assert items(main) == items(_eager())


def _imported(*args) -> set[str]:
    """The vdisk.cli modules a new process has loaded when ``vdisk ARGS`` exits."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print(' '.join(m for m in sys.modules if m.startswith('vdisk.cli')),"
            " file=sys.stderr))\n"
            "from vdisk.cli.main import main\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60)
    return set(r.stderr.splitlines()[-1].split())


def test_verify_imports_only_its_own_module(disk):
    assert _imported("verify", disk) == SHARED | {"vdisk.cli.verify", "vdisk.cli.progress"}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["no-such-command"]])
def test_the_group_alone_imports_no_command(args):
    assert _imported(*args) == SHARED


def test_a_commands_help_imports_only_its_module():
    assert _imported("snapshot", "--help") == SHARED | {"vdisk.cli.snapshot", "vdisk.cli.progress"}
