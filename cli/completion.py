"""``vdisk completion SHELL``: the shell completion script (click's).

Completes commands, options, paths and - once DISK is typed - the names of
its snapshots. The script calls ``vdisk`` itself with ``_VDISK_COMPLETE``
set, so it stays right as vdisk changes.
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for bash, zsh or fish.

    Load it in the current shell with eval, or save it where your shell
    looks for completions (bash: ~/.local/share/bash-completion/completions/vdisk).

    Example: eval "$(vdisk completion bash)"
    """
    from click.shell_completion import get_completion_class

    # The root group from the context, not by importing vdisk.cli.main, which
    # imports this module (no cycle; and under python -m vdisk.cli.main that
    # import would run main.py a second time).
    root = click.get_current_context().find_root().command
    comp = get_completion_class(shell)(root, {}, "vdisk", "_VDISK_COMPLETE")
    click.echo(comp.source())
