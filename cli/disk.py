"""``vdisk create``, ``info``, ``resize``, ``compact`` and ``delete``: the disk as a whole."""

from __future__ import annotations

import os
import sys

import click

from vdisk.errors import Busy, InvalidArgument
from vdisk.units import (GROW_CONFIRM_FACTOR, check_block_size, check_disk_size, describe_size, format_size,
                         needs_confirmation)

from .common import (disk_argument, emit_json, is_local, is_rados, json_option, local_time, open_live,
                     quiet_option, resolve, snapshot_json)
from .progress import Progress
from .sizes import SizeType


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


@click.command()
@disk_argument
@click.option("--yes", "-y", is_flag=True, help="Delete without asking (needed when stdin is not a terminal).")
@click.option("--break-lock", is_flag=True,
              help="rados: disks: a writer that died or hangs holds the disk; blocklist it in the cluster, "
                   "then delete.")
@json_option
def delete(disk, yes, break_lock, as_json):
    """Delete a disk with all its snapshots, for good.

    A local disk is its directory, removed only if it holds a vdisk disk's
    records; a rados:POOL/NAME disk is every object of it in the pool.
    Either way its local state directory goes too. Refused while the disk
    is served, mounted or open for writing (the holder is named). Asks on
    a terminal first, unless --yes.

    A delete cut short (a crash, Ctrl-C) is finished by running it again;
    until then the disk opens for nobody.

    Example: vdisk delete vm1.vdisk --yes
    """
    from vdisk.location import delete as delete_disk, find_deletion
    if break_lock and not is_rados(disk):
        raise InvalidArgument("--break-lock is for a rados:POOL/NAME disk; a local disk's writer lock goes "
                              "with its process")
    location = resolve(disk)
    found = find_deletion(location)
    _refuse_served(disk, found.local_dir)
    found.refuse_if_held(break_lock)
    if not yes:
        _confirm_delete(disk, found)
    done = delete_disk(location, break_lock=break_lock)
    if as_json:
        emit_json({"disk": done.location, "where": done.where, "size": done.size, "snapshots": done.snapshots,
                   "freed_bytes": done.freed_bytes, "resumed": done.resumed})
    elif done.resumed:
        click.echo(f"deleted {disk}: finished a delete that had been cut short")
    else:
        click.echo(f"deleted {disk}: {_describe_doomed(done)}")


def _refuse_served(disk: str, local_dir: str):
    """A server or mount on this host holds the disk even read-only (no writer's lock then):
    its control socket answers, or a read-only vdisk serve listens on the default NBD socket."""
    from vdisk.control.client import find_server

    from .serve import DEFAULT_SOCKET
    server = find_server(local_dir)
    if server is not None:
        owner = server.owner
        server.close()
        raise Busy(f"{disk} is served or mounted by {owner}; stop it first (Ctrl-C its vdisk serve, or "
                   f"vdisk umount), then delete")
    nbd = os.path.join(os.path.abspath(local_dir), DEFAULT_SOCKET)
    if _listening(nbd):
        raise Busy(f"{disk} is served read-only (something listens on {nbd}); stop that vdisk serve first, "
                   f"then delete")


def _listening(path: str) -> bool:
    """Whether a unix socket is listening at ``path``: asked of the kernel, not by connecting
    (which a server would log as a client that went away)."""
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                fields = line.split(None, 7)
                # Flags __SO_ACCEPTCON (0x10000): a listening socket.
                if len(fields) == 8 and int(fields[3], 16) & 0x10000 and fields[7].rstrip("\n") == path:
                    return True
    except OSError:
        pass
    return False


def _describe_doomed(found) -> str:
    where = "in data objects" if found.where["kind"] == "rados" else "on the file system"
    freed = f"{describe_size(found.freed_bytes)} {where}"
    if found.size is None:
        return f"a disk whose creation did not finish, {freed}"
    snaps = "no snapshots" if not found.snapshots else f"{found.snapshots} snapshot" + "s" * (found.snapshots > 1)
    return f"{describe_size(found.size)}, {snaps}, {freed}"


def _confirm_delete(disk: str, found):
    if found.resumed:
        what, question = (f"finish deleting {disk} (a delete cut short left it half done)",
                          f"Finish deleting {disk}? A delete cut short left it half done")
    else:
        what = f"delete {disk} ({_describe_doomed(found)})"
        question = f"Delete {disk} ({_describe_doomed(found)}) with all its snapshots? This cannot be undone"
    if not sys.stdin.isatty():
        raise InvalidArgument(f"refusing to {what} without --yes: deleting cannot be undone; add --yes if you "
                              f"mean it")
    if not click.confirm(question, default=False, err=True):
        raise InvalidArgument(f"not deleted: {disk} is untouched")
