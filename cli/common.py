"""What every ``vdisk`` command shares: arguments and options, opening a
disk, JSON output, tables and times.

Commands are thin: open the disk (:func:`open_disk`, or :func:`open_live`
when a running ``vdisk serve``/``vdisk mount`` may hold it), call one library
function, print. They raise :mod:`vdisk.errors` exceptions and never print
errors themselves; :mod:`vdisk.cli.failures` turns them into one line.
"""

from __future__ import annotations

import datetime
import os
import sys
import unicodedata

import click

from vdisk.errors import Busy, Interrupted

from . import failures


class VdiskGroup(click.Group):
    """A command group whose errors all go through :mod:`vdisk.cli.failures`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        parent = super()

        def invoke():
            return parent.main(argv, prog_name or "vdisk", complete_var, standalone_mode=False, **extra)

        if not standalone_mode:
            return invoke()
        sys.exit(failures.run(invoke, argv))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise failures.PipeClosed() from None
        except KeyboardInterrupt:
            # Before click sees it: it would print a blank line to stderr.
            raise Interrupted("interrupted") from None

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if (not name.startswith("-") and self.get_command(ctx, name) is None
                and not ctx.resilient_parsing):
            raise click.UsageError(failures.unknown_command(ctx, name, self.list_commands(ctx)), ctx)
        return super().resolve_command(ctx, args)


def help_when_bare(ctx: click.Context):
    """``vdisk`` or ``vdisk snapshot`` alone: the help, and success."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)


def _complete_snapshot(ctx, param, incomplete):
    """Shell completion of NAME: the snapshots of the DISK already typed."""
    disk = ctx.params.get("disk")
    if not disk:
        return []
    try:
        with open_live(disk, readonly=True) as d:
            names = [s.name for s in d.snapshots(exclusive=False)]
    except Exception:         # completion must never print an error into the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


def _note_json(ctx, param, value):
    if value:
        failures.STATE.json = True
    return value


disk_argument = click.argument("disk", type=click.Path(file_okay=False))
snapshot_argument = click.argument("name", shell_complete=_complete_snapshot)
json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="Print JSON on stdout instead of text (schema: docs/CLI.md).")
quiet_option = click.option("--quiet", "-q", is_flag=True,
                            help="No progress bar (there is one on stderr when it is a terminal).")


class CephOptions:
    """``vdisk --ceph-conf FILE --ceph-id NAME --ceph-timeout S``: how rados: disks are reached."""

    conf: str | None = None
    client_id: str | None = None
    timeout: float = 30


CEPH = CephOptions()


def resolve(disk):
    """DISK as the engine takes it: a path, or a RadosLocation with the --ceph-* options."""
    from vdisk.location import parse
    return parse(disk, conf=CEPH.conf, client_id=CEPH.client_id, timeout=CEPH.timeout)


def is_rados(disk) -> bool:
    from vdisk.location import is_rados as rados
    return rados(disk)


def local_dir(disk) -> str:
    """Where a disk's sockets live on this host: the container, or a rados disk's state directory."""
    from vdisk.location import local_dir as find
    return find(resolve(disk))


def require_disk(path: str):
    """Refuse what is not a disk, as :meth:`vdisk.Disk.open` would, without opening it.

    For front ends whose disk is opened by another process (nbdkit, the
    mount process), so the refusal comes first and as one line. A rados:
    location is only parsed here: opening it is the test.
    """
    if is_rados(path):
        resolve(path)
        return
    from vdisk.container import require_container
    require_container(path)


def open_disk(path: str, readonly: bool = False, break_lock: bool = False):
    # Through convert's opener: a disk converted online reads through its source.
    from vdisk.convert.online import open_disk as open_converting
    d = open_converting(resolve(path), readonly=readonly, background=False, break_lock=break_lock)
    if not readonly:
        try:
            refuse_unfinished(d)
        except BaseException:
            d.close()
            raise
    return d


def refuse_unfinished(d):
    """Refuse to change (or serve, or mount) a disk an offline conversion
    has not finished: its running point is not yet the source's top image,
    and a change made now would land inside a layer's snapshot."""
    from vdisk.convert.state import disk_label, progress_of
    rec = progress_of(d)
    # An online conversion is carried on by whoever serves the disk, and the
    # engine itself refuses what would mix it with client changes.
    if rec is not None and not rec.online:
        name = disk_label(d)
        raise Busy(f"{name} is an unfinished conversion of {rec.source} (state {rec.next + 1} of "
                   f"{len(rec.steps)}); finish it first: vdisk convert --resume {name}")


def require_finished(path: str):
    """:func:`refuse_unfinished` for a front end whose disk another process opens."""
    with open_disk(path, readonly=True) as d:
        refuse_unfinished(d)


def open_live(path: str, readonly: bool = False):
    """The disk, or - when a server (vdisk serve, vdisk mount) holds it - a
    proxy to that server with the same methods (see vdisk.control.client)."""
    from vdisk.control.client import find_server
    server = find_server(local_dir(path))
    return server if server is not None else open_disk(path, readonly)


def is_local(d) -> bool:
    """Whether ``d`` is a Disk opened here (so it takes a progress callback),
    not a proxy to a server that runs the work itself."""
    from vdisk import Disk
    return isinstance(d, Disk)


def emit_json(obj):
    import json
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def snapshot_json(s) -> dict:
    """One snapshot as every --json output shows it (docs/CLI.md)."""
    return {"name": s.name, "created": s.created, "size": s.size, "parent": s.parent,
            "exclusive_bytes": s.exclusive_bytes, "seq": s.seq}


def local_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide CJK characters take two)."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Lines of a table whose columns fit their longest cell; the last column is not padded."""
    cols = len(headers)
    widths = [max([width(headers[i])] + [width(r[i]) for r in rows]) for i in range(cols)]

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - width(cell))
            if i == cols - 1 and i not in right:
                out.append(cell)
            else:
                out.append(pad + cell if i in right else cell + pad)
        return "  ".join(out).rstrip()

    return [line(headers)] + [line(r) for r in rows]
