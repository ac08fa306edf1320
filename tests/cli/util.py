"""Helpers for the CLI tests: the command run in this process (fast) or as
a real subprocess (exit codes, streams, terminals and signals as a shell
sees them)."""

from __future__ import annotations

import os
import subprocess
import sys

import click
from click.testing import CliRunner

from vdisk.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20


def run(*args, input=None, env=None):
    """``vdisk ARGS`` in this process: a click Result with stdout, stderr, exit_code."""
    return CliRunner(catch_exceptions=False).invoke(main, [str(a) for a in args], input=input, env=env)


def subcommands(group):
    """(name, command) of every command of ``group``, sorted; the top group loads its commands lazily,
    so ``group.commands`` holds only the ones used so far."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        yield name, group.get_command(ctx, name)


def vdisk_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vdisk.cli.main", *map(str, args)]


def run_proc(*args, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """``vdisk ARGS`` as a subprocess, its output captured as text."""
    return subprocess.run(vdisk_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env}, **kw)


def one_error_line(r, code: int, *words: str):
    """Exit ``code``, and stderr exactly one 'vdisk: error:' line holding ``words``."""
    lines = r.stderr.splitlines()
    got = r.exit_code if hasattr(r, "exit_code") else r.returncode
    assert got == code, (got, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("vdisk: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in r.stderr and "Usage:" not in r.stderr
    return lines[0]


