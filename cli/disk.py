"""``vdisk create``, ``info``, ``resize`` and ``compact``: the disk as a whole."""

from __future__ import annotations

import os
import sys

import click

from vdisk.errors import InvalidArgument
from vdisk.units import (GROW_CONFIRM_FACTOR, check_block_size, check_disk_size, describe_size, format_size,
                         needs_confirmation)

from .common import (SizeType, disk_argument, emit_json, is_local, json_option, local_time, open_live,
                     quiet_option, resolve, snapshot_json)
from .progress import Progress


def _max_size() -> int:
    from vdisk.disk import MAX_DISK_SIZE
    return MAX_DISK_SIZE


@click.command()
@disk_argument
@click.option("--size", required=True, type=SizeType(), help="Disk size, e.g. 10G, 512M, 1.5T (binary units).")
@click.option("--block-size", default="4096", type=SizeType(), show_default=True,
              help="Block size: a power of two from 512 to 64K.")
@json_option
def create(disk, size, block_size, as_json):
    """Create a new, empty disk.

    The disk is a directory; its data file is sparse, so a new disk takes
    almost no space whatever its size (up to 1 EiB).

    Example: vdisk create vm1.vdisk --size 10G
    """
    from vdisk import Disk
    check_block_size(block_size)
    check_disk_size(size, block_size, _max_size())
    with Disk.create(resolve(disk), size, block_size=block_size) as d:
        data = d.info()
    data["conversion"] = None
    if as_json:
        emit_json(_info_json(data))
        return
    click.echo(f"created {disk}: {describe_size(data['size'])}, block size {describe_size(data['block_size'])}")


def _info_json(data: dict, snaps=None) -> dict:
    out = dict(data)
    if snaps is not None:
        out["snapshots"] = [snapshot_json(s) for s in snaps]
    return out


def _describe_conversion(c: dict) -> str:
    if c["complete"]:
        return f"converted from {c['source']} ({len(c['layers'])} layers); the source is no longer used"
    done = f"state {c['states_done'] + 1} of {c['states']} from {c['source']}, which is still needed"
    if c["online"]:
        return f"online, in progress: {done}; the process serving the disk carries it on"
    return f"unfinished: {done}; finish with {c['resume']}"


def _conversion(d):
    from vdisk.convert.state import status
    return status(d)


@click.command()
@disk_argument
@json_option
def info(disk, as_json):
    """Show size, space used, snapshots and format version.

    Example: vdisk info vm1.vdisk --json
    """
    with open_live(disk, readonly=True) as d:
        data = d.info()
        snaps = d.snapshots()
        # A server adds it to its own answer (control/server.py).
        if is_local(d):
            data["conversion"] = _conversion(d)
    if as_json:
        emit_json(_info_json(data, snaps))
        return
    rows = [("disk", data["path"])]
    where = data.get("where") or {}
    if where.get("kind") == "rados":
        rows.append(("lives in", f"rados pool {where['pool']}, image {where['image']}, cluster {where['fsid']} "
                                 f"(conf {where['conf'] or 'from Ceph defaults'})"))
    rows += [
            ("virtual size", describe_size(data["size"])),
            ("block size", describe_size(data["block_size"])),
            ("allocated", f"{describe_size(data['allocated_bytes'])}, the running point's blocks"),
            ("physical", f"{describe_size(data['physical_bytes'])}, with every snapshot")]
    if where.get("kind") == "rados":
        rows.append(("data objects", f"{describe_size(data['file_bytes'])} in pool {where['pool']} "
                                     f"(the objects that may exist, at full size)"))
    elif "file_bytes" in data:
        rows.append(("data file", f"{describe_size(data['file_bytes'])} on the file system "
                                  f"(free blocks are reused before it grows)"))
    if data.get("deferred_bytes"):
        rows.append(("deleted, held", f"{describe_size(data['deferred_bytes'])} held by deleted snapshots "
                                      f"that are still the base of others (after a revert); it returns "
                                      f"when at most one of them is left"))
    conv = data.get("conversion")
    if conv is not None:
        rows.append(("conversion", _describe_conversion(conv)))
    rows += [("format version", str(data["format_version"])), ("snapshots", str(len(snaps)))]
    for label, value in rows:
        click.echo(f"{label + ':':<16}{value}")
    if snaps:
        names = max(len(s.name) for s in snaps)
        for s in snaps:
            click.echo(f"  {s.name:<{names}}  {local_time(s.created)}  exclusive {format_size(s.exclusive_bytes)}")


@click.command()
@disk_argument
@click.argument("size", type=SizeType())
@click.option("--yes", "-y", is_flag=True,
              help=f"Grow by more than {GROW_CONFIRM_FACTOR}x without asking (a disk cannot be shrunk back).")
@json_option
def resize(disk, size, yes, as_json):
    """Grow the disk to SIZE (shrinking is refused).

    Growing is instant and takes no space. It cannot be undone, so growing
    to more than 16 times the current size asks first (or needs --yes):
    1024P typed for 1024M would otherwise stick.

    Example: vdisk resize vm1.vdisk 20G
    """
    with open_live(disk, readonly=True) as d:
        before = d.info()
    check_disk_size(size, before["block_size"], _max_size(), current=before["size"])
    if needs_confirmation(before["size"], size) and not yes:
        _confirm_grow(disk, before["size"], size)
    with open_live(disk) as d:
        d.resize(size)
    if as_json:
        emit_json({"path": before["path"], "old_size": before["size"], "size": size})
    elif size == before["size"]:
        click.echo(f"{disk} is already {describe_size(size)}; nothing changed")
    else:
        click.echo(f"resized {disk} from {describe_size(before['size'])} to {describe_size(size)}")


def _confirm_grow(disk: str, current: int, size: int):
    what = (f"grow {disk} from {describe_size(current)} to {describe_size(size)}, {size // current} times "
            f"its size")
    if not sys.stdin.isatty():
        raise InvalidArgument(f"refusing to {what} without --yes: a disk cannot be shrunk back, so a "
                              f"mistyped unit would stick; add --yes if you mean it")
    if not click.confirm(f"{what[0].upper()}{what[1:]}? A disk cannot be shrunk back", default=False, err=True):
        raise InvalidArgument(f"not resized: {disk} stays {describe_size(current)}")


@click.command()
@disk_argument
@quiet_option
@json_option
def compact(disk, quiet, as_json):
    """Give free space in the data file back to the file system.

    Freed blocks that are scattered stay in the data file for reuse (one hole
    punch per block is slow on many file systems); this punches them all, in
    short batches, while the disk stays in use. A progress bar is shown on
    stderr when it is a terminal.

    Example: vdisk compact vm1.vdisk
    """
    with open_live(disk) as d, Progress(quiet) as bar:
        returned = d.compact(progress=bar) if is_local(d) else d.compact()
    if as_json:
        emit_json({"path": os.path.abspath(disk), "returned_bytes": returned})
        return
    click.echo(f"returned {describe_size(returned)} to the file system")
