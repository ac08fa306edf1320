"""The ``vdisk`` command line: thin wrappers over :class:`vdisk.Disk`.

Each command opens the disk, calls one engine function and prints the
result. Engine errors become one line on stderr and the exit code their class
carries (see :mod:`vdisk.errors`); nothing reaches the user as a traceback.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys

import click

from vdisk import __version__
from vdisk.errors import VdiskError
from vdisk.units import format_size, parse_size


def _fail(message: str, code: int):
    click.echo(f"vdisk: error: {message}", err=True)
    sys.exit(code)


def engine_errors(fn):
    """Turn engine errors into one line on stderr and the error's exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VdiskError as e:
            _fail(str(e), e.exit_code)
        except OSError as e:
            _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}", 1)
    return wrapper


def _open(path, readonly=False):
    from vdisk import Disk
    return Disk.open(path, readonly=readonly)


def _open_live(path, readonly=False):
    """The disk, or - when a server (vdisk serve, vdisk mount) holds it - a
    proxy to that server with the same methods (see vdisk.control.client)."""
    from vdisk.control.client import find_server
    server = find_server(path)
    return server if server is not None else _open(path, readonly)


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except VdiskError as e:
            self.fail(str(e), param, ctx)


disk_argument = click.argument("disk", type=click.Path(file_okay=False))
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vdisk")
def main():
    """Virtual disks with instant, cheap snapshots.

    A disk is a directory holding copy-on-write B+tree metadata (LMDB) and a
    sparse data file.

    Example: vdisk create vm1.vdisk --size 10G
    """


@main.command()
@disk_argument
@click.option("--size", required=True, type=SizeType(), help="Disk size, e.g. 10G, 512M, 1T.")
@click.option("--block-size", default="4096", type=SizeType(), show_default=True,
              help="Block size in bytes (a power of two, 512 to 65536).")
@engine_errors
def create(disk, size, block_size):
    """Create a new disk.

    Example: vdisk create vm1.vdisk --size 10G
    """
    from vdisk import Disk
    with Disk.create(disk, size, block_size=block_size) as d:
        click.echo(f"created {disk}: {format_size(d.size)} ({d.size} bytes), block size {d.block_size}")


def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


@main.command()
@disk_argument
@json_option
@engine_errors
def info(disk, as_json):
    """Show size, space used, snapshots and format version.

    Example: vdisk info vm1.vdisk --json
    """
    with _open_live(disk, readonly=True) as d:
        data = d.info()
        snaps = d.snapshots()
    data["snapshots"] = [s.__dict__ for s in snaps]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"disk:            {data['path']}")
    click.echo(f"size:            {format_size(data['size'])} ({data['size']} bytes)")
    click.echo(f"block size:      {data['block_size']}")
    click.echo(f"allocated:       {format_size(data['allocated_bytes'])} (running point)")
    click.echo(f"physical:        {format_size(data['physical_bytes'])} (all snapshots)")
    if "file_bytes" in data:
        click.echo(f"data file:       {format_size(data['file_bytes'])} on the file system "
                   f"(free blocks are reused before it grows)")
    click.echo(f"format version:  {data['format_version']}")
    click.echo(f"snapshots:       {len(snaps)}")
    for s in snaps:
        click.echo(f"  {s.name:<24} {_time(s.created)}  exclusive {format_size(s.exclusive_bytes)}")


@main.group()
def snapshot():
    """Create, list, delete and revert to snapshots."""


@snapshot.command("create")
@disk_argument
@click.argument("name")
@engine_errors
def snapshot_create(disk, name):
    """Take a snapshot of every write so far (instant).

    Example: vdisk snapshot create vm1.vdisk before-upgrade
    """
    with _open_live(disk) as d:
        s = d.create_snapshot(name)
    click.echo(f"created snapshot {s.name}")


@snapshot.command("list")
@disk_argument
@json_option
@engine_errors
def snapshot_list(disk, as_json):
    """List snapshots, oldest first, with the space each holds alone.

    Example: vdisk snapshot list vm1.vdisk
    """
    with _open_live(disk, readonly=True) as d:
        snaps = d.snapshots()
    if as_json:
        click.echo(json.dumps([s.__dict__ for s in snaps], indent=2))
        return
    if not snaps:
        click.echo("no snapshots")
        return
    click.echo(f"{'NAME':<24} {'CREATED':<19}  {'SIZE':>8}  {'EXCLUSIVE':>9}  PARENT")
    for s in snaps:
        click.echo(f"{s.name:<24} {_time(s.created):<19}  {format_size(s.size):>8}  "
                   f"{format_size(s.exclusive_bytes):>9}  {s.parent or '-'}")


@snapshot.command("delete")
@disk_argument
@click.argument("name")
@engine_errors
def snapshot_delete(disk, name):
    """Delete a snapshot and return the space only it held.

    Example: vdisk snapshot delete vm1.vdisk nightly-2026-11-01
    """
    with _open_live(disk) as d:
        before = d.info()["physical_bytes"]
        d.delete_snapshot(name)
        after = d.info()["physical_bytes"]
    click.echo(f"deleted snapshot {name}, freed {format_size(max(0, before - after))}")


@snapshot.command("revert")
@disk_argument
@click.argument("name")
@engine_errors
def snapshot_revert(disk, name):
    """Make the disk read exactly as snapshot NAME (later writes are dropped).

    Example: vdisk snapshot revert vm1.vdisk before-upgrade
    """
    with _open_live(disk) as d:
        d.revert(name)
    click.echo(f"reverted to snapshot {name}")


@main.command()
@disk_argument
@click.argument("size", type=SizeType())
@engine_errors
def resize(disk, size):
    """Grow the disk to SIZE (shrinking is refused).

    Example: vdisk resize vm1.vdisk 20G
    """
    with _open_live(disk) as d:
        d.resize(size)
    click.echo(f"resized {disk} to {format_size(size)}")


@main.command()
@disk_argument
@engine_errors
def compact(disk):
    """Give free space inside the data file back to the file system.

    Freed blocks that are scattered stay in the data file for reuse (one hole
    punch per block is slow on many file systems); this punches them all, in
    short batches, while the disk stays in use.

    Example: vdisk compact vm1.vdisk
    """
    with _open_live(disk) as d:
        returned = d.compact()
    click.echo(f"returned {format_size(returned)} to the file system")


# NBD front end (issue 5), built with the decorators above.
from vdisk.cli import serve as _serve  # noqa: E402

main.add_command(_serve.command(disk_argument, engine_errors))

from .verify import verify  # noqa: E402
main.add_command(verify)

from .mount import mount, umount  # noqa: E402
main.add_command(mount)
main.add_command(umount)


if __name__ == "__main__":
    main()
