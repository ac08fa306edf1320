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

    from .main import main
    comp = get_completion_class(shell)(main, {}, "vdisk", "_VDISK_COMPLETE")
    click.echo(comp.source())
