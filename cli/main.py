"""The ``vdisk`` command line: thin wrappers over :class:`vdisk.Disk`.

Each command opens the disk, calls one library function and prints the
result (text, or JSON with ``--json``; the schemas are in docs/CLI.md).
Every failure takes one path, :mod:`vdisk.cli.failures`: one line on stderr
and the exit code of :data:`vdisk.errors.EXIT_CODES`, never a traceback
unless ``--debug``. The commands live in modules by subject: ``disk``
(create, info, resize, compact, delete), ``snapshot``, ``serve``, ``mount``,
``verify``, ``replicate`` (diff, send, receive), ``completion``.

A command's module is imported only when that command runs (or its help or
completion is asked): :data:`COMMANDS` names each one, so ``vdisk verify
DISK`` loads verify's code and not serve's, mount's or convert's.
"""

from __future__ import annotations

import importlib

import click

from vdisk import __version__

from . import failures
from .common import CEPH, VdiskGroup, help_when_bare


def _set_debug(ctx, param, value):
    if value:
        failures.STATE.debug = True


# Every command: name -> ("module:attribute" in vdisk.cli, its one-line help).
# The line is what `vdisk --help` lists, kept here so that listing imports no
# command; it must be the command's own (the first sentence of its
# docstring): tests/cli/test_lazy.py checks each against the command.
COMMANDS = {
    "create": ("disk:create", "Create a new, empty disk."),
    "info": ("disk:info", "Show size, space used, snapshots and format version."),
    "resize": ("disk:resize", "Grow the disk to SIZE (shrinking is refused)."),
    "compact": ("disk:compact", "Give free space in the data file back to the file system."),
    "delete": ("disk:delete", "Delete a disk with all its snapshots, for good."),
    "snapshot": ("snapshot:snapshot", "Create, list, show, rename, delete and revert to snapshots."),
    "serve": ("serve:serve", "Serve DISK over NBD until Ctrl-C or SIGTERM."),
    "mount": ("mount:mount", "Mount DISK at MOUNTPOINT as image files."),
    "umount": ("mount:umount", "Unmount a vdisk mount: flush the disk and release it."),
    "verify": ("verify:verify", "Check every snapshot, map and the allocator of DISK."),
    "convert": ("convert:convert", "Convert a qemu chain into a new DISK, layers as snapshots."),
    "import": ("convert:import_", "Make a new DISK from one image qemu reads."),
    "export": ("convert:export", "Write DISK (or one snapshot) to an image file OUT, sparse."),
    "diff": ("replicate:diff", "List the ranges that differ between two snapshots."),
    "send": ("replicate:send", "Write snapshot NAME as a stream, in full or from BASE."),
    "receive": ("replicate:receive", "Recreate a snapshot from a stream of vdisk send."),
    "completion": ("completion:completion", "Print the shell completion script for bash, zsh or fish."),
}


class LazyGroup(VdiskGroup):
    """A group whose commands are imported on first use, from a table
    name -> ("module:attribute", one-line help) (click's "lazy loading
    subcommands" pattern). Its help and the completion of command names come
    from the table's lines and import nothing."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            self.add_command(getattr(importlib.import_module(f"vdisk.cli.{module}"), attr), name)
        return self.commands.get(name)

    def summary(self, name: str, limit: int = 45) -> str:
        """The one-line help of command ``name`` cut to ``limit`` as click cuts it, without importing it."""
        if name not in self.lazy:
            return self.commands[name].get_short_help_str(limit)
        return click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit)

    def format_commands(self, ctx, formatter):
        # click's Group.format_commands, with the lines from the table.
        names = [n for n in self.list_commands(ctx) if n in self.lazy or not self.commands[n].hidden]
        if names:
            limit = formatter.width - 6 - max(len(n) for n in names)
            with formatter.section("Commands"):
                formatter.write_dl([(n, self.summary(n, limit)) for n in names])

    def shell_complete(self, ctx, incomplete):
        # click's Group.shell_complete, with the lines from the table.
        from click.shell_completion import CompletionItem
        items = [CompletionItem(n, help=self.summary(n)) for n in self.list_commands(ctx)
                 if n.startswith(incomplete) and (n in self.lazy or not self.commands[n].hidden)]
        return items + click.Command.shell_complete(self, ctx, incomplete)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("vdisk", cls=LazyGroup, lazy=COMMANDS, context_settings=CONTEXT, invoke_without_command=True)
@click.version_option(__version__, "-V", "--version", prog_name="vdisk", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show the traceback of an error (for bug reports).")
@click.option("--ceph-conf", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Ceph configuration for rados:POOL/NAME disks (default: $CEPH_CONF, else Ceph's "
                   "search path: /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).")
@click.option("--ceph-id", metavar="NAME", help="Ceph client name for rados: disks (client.NAME; default admin).")
@click.option("--ceph-timeout", type=click.FloatRange(1, 3600), default=30, show_default=True, metavar="SECONDS",
              help="Give up reaching the Ceph cluster after this long.")
@click.pass_context
def main(ctx, ceph_conf, ceph_id, ceph_timeout):
    """Virtual disks with instant, cheap snapshots.

    A disk is a directory holding copy-on-write B+tree metadata (LMDB) and a
    sparse data file. Serve it over NBD (vdisk serve) or mount it as image
    files (vdisk mount); snapshot, verify and compact it while it is in use.

    Errors are one line on stderr; exit codes and the --json schemas are in
    docs/CLI.md, a walk-through in docs/GUIDE.md.

    A disk can also live in a Ceph pool: rados:POOL/NAME wherever a
    command takes DISK (docs/RADOS.md).

    Example: vdisk create vm1.vdisk --size 10G
    """
    CEPH.conf, CEPH.client_id, CEPH.timeout = ceph_conf, ceph_id, ceph_timeout
    # One cluster connection per command: every look-up of a rados: disk
    # below shares it, and it is shut down when the command ends.
    from vdisk.location import hold_connections
    ctx.with_resource(hold_connections())
    help_when_bare(ctx)


if __name__ == "__main__":
    main()
