"""``vdisk diff``, ``vdisk send`` and ``vdisk receive``: changed blocks and replication.

The work is :mod:`vdisk.snapshots.diff` and :mod:`vdisk.replicate`; these
commands open the disk, call it and print. ``diff`` and ``send`` open the
disk read-only, so they run beside a server or a mount holding it;
``receive`` needs the disk to itself. The stream format is docs/STREAM.md.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from vdisk.errors import InvalidArgument
from vdisk.units import format_size

from .common import (disk_argument, emit_json, is_rados, json_option, open_disk, quiet_option, resolve,
                     snapshot_argument, table)
from .progress import Progress

PHASES = {
    "send": ("sending changed blocks", "bytes"),
    "receive": ("receiving", "bytes"),
    "apply": ("applying to the disk", "bytes"),
}


def _rate(n: int, seconds: float) -> str:
    return f"{format_size(int(n / seconds))}/s" if seconds > 0 else "-"


@click.command()
@disk_argument
@click.argument("from_name", metavar="FROM")
@click.argument("to_name", metavar="[TO]", required=False)
@json_option
def diff(disk, from_name, to_name, as_json):
    """List the ranges that differ between two snapshots.

    TO defaults to the running point; FROM may be older or newer than TO,
    or '-' for an empty disk (then every allocated range of TO is listed).
    Each range is 'data' (TO holds blocks there) or 'zero' (a hole in TO).
    Only the parts of the two snapshots' trees that differ are read, so
    the time follows the change, not the disk size; the answer comes from
    the committed metadata, exact after any crash.

    Example: vdisk diff vm1.vdisk nightly-1 nightly-2
    """
    from vdisk.snapshots.diff import diff as run_diff
    with open_disk(disk, readonly=True) as d:
        r = run_diff(d, from_name, to_name)
    if as_json:
        emit_json({"from": from_name, "to": to_name, "block_size": r.block_size, "size": r.to_size,
                   "changes": [{"offset": c.offset, "length": c.length, "data": c.data} for c in r.changes],
                   "data_bytes": r.data_bytes, "zero_bytes": r.hole_bytes, "nodes_read": r.nodes_read,
                   "shared_skipped": r.shared_skipped})
        return
    if r.changes:
        rows = [[str(c.offset), str(c.length), "data" if c.data else "zero"] for c in r.changes]
        for line in table(["OFFSET", "LENGTH", "KIND"], rows, right={0, 1}):
            click.echo(line)
    to = to_name if to_name is not None else "the running point"
    click.echo(f"{len(r.changes)} range{'s' if len(r.changes) != 1 else ''} differ from {from_name} to {to}: "
               f"{format_size(r.data_bytes)} of data, {format_size(r.hole_bytes)} now zero "
               f"({r.nodes_read} metadata nodes read, {r.shared_skipped} shared subtrees skipped)")


@click.command()
@disk_argument
@snapshot_argument
@click.option("--from", "base", metavar="BASE",
              help="Send only the change from snapshot BASE, which the receiving disk has.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the stream to FILE (default: stdout, which must be a pipe or a file).")
@click.option("--resume", "token", metavar="TOKEN",
              help="Continue an interrupted receive: TOKEN is what vdisk receive --resume-token printed.")
@quiet_option
@json_option
def send(disk, name, base, output, token, quiet, as_json):
    """Write snapshot NAME as a stream, in full or from BASE.

    The stream recreates NAME on another disk (vdisk receive), holes and
    zeros as such; with --from only the blocks that changed since BASE are
    read and sent. It is checksummed (blake3 per record and as a whole) and
    its format is docs/STREAM.md. The disk may be in use meanwhile. A
    progress bar is drawn on stderr when it is a terminal; a one-line
    summary ends on stderr (on stdout with -o).

    Example: vdisk send vm1.vdisk nightly-2 --from nightly-1 | ssh backup vdisk receive vm1.vdisk
    """
    from vdisk.replicate.send import send as run_send
    if as_json and output is None:
        raise click.UsageError("--json needs -o FILE: stdout carries the stream")
    if output is None and sys.stdout.isatty():
        raise click.UsageError("refusing to write a binary stream to a terminal: pipe it "
                               "(| vdisk receive DISK) or give -o FILE")
    with open_disk(disk, readonly=True) as d:
        with _output(output) as out, Progress(quiet, phases=PHASES) as bar:
            s = run_send(d, name, out, base=base, resume_token=token, progress=bar)
    if as_json:
        emit_json(s.to_dict())
        return
    kind = f"incremental from {base}" if base else "full"
    if s.resume_offset:
        kind += f", resumed at byte {s.resume_offset}"
    click.echo(f"sent snapshot {name} ({kind}): {format_size(s.data_bytes)} of data and "
               f"{format_size(s.zero_bytes)} of zeros in {s.records} records, a {format_size(s.stream_bytes)} "
               f"stream in {s.seconds:.2f} s ({_rate(s.stream_bytes, s.seconds)})", err=output is None)


@contextlib.contextmanager
def _output(path):
    """stdout's binary stream, or FILE - removed again if the send fails."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as f:
        try:
            yield f
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise


class _NoTerminal:
    """stdin when it is a terminal: there is no stream to read there."""

    def readinto(self, buf):
        raise InvalidArgument("no stream on stdin (it is a terminal): pipe one in "
                              "(vdisk send ... | vdisk receive DISK) or give -i FILE")

    read = readinto


@click.command()
@disk_argument
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False, exists=True),
              help="Read the stream from FILE (default: stdin).")
@click.option("--resume", is_flag=True, help="Continue the interrupted receive in DISK with this stream.")
@click.option("--resume-token", "show_token", is_flag=True,
              help="Print where the interrupted receive stands, as a token for vdisk send --resume.")
@click.option("--abort", is_flag=True, help="Drop the interrupted receive in DISK; the disk stays as it was.")
@click.option("--break-lock", is_flag=True,
              help="A rados: disk whose last writer died (a receiver killed): fence it in the cluster and "
                   "take its lock over.")
@quiet_option
@json_option
def receive(disk, input_path, resume, show_token, abort, break_lock, quiet, as_json):
    """Recreate a snapshot from a stream of vdisk send.

    DISK is created for a full stream if it does not exist; an incremental
    stream needs its base there (the very snapshot, not just its name) and
    a running point unchanged since it. Nothing appears until the whole
    stream checked out: a damaged stream is refused and leaves DISK as it
    was. A stream cut short keeps what arrived; --resume-token says where
    to send from, and --resume continues. A rados: disk works alike
    (docs/STREAM.md says what stays on the receiving host); one whose
    receiver was killed holds that receiver's lock until --break-lock.

    Example: vdisk send vm1.vdisk nightly-1 | vdisk receive backup.vdisk
    """
    from vdisk.replicate import receive as rx
    where = resolve(disk)       # a rados: disk with the --ceph options
    picked = [o for o, on in (("--resume", resume), ("--resume-token", show_token), ("--abort", abort),
                              ("-i", input_path is not None)) if on]
    if (show_token or abort) and len(picked) > 1:
        raise click.UsageError(f"{picked[0]} and {picked[1]} cannot be used together")
    if break_lock and not is_rados(where):
        raise InvalidArgument("--break-lock is for a rados:POOL/NAME disk (a local disk's lock goes when its "
                              "holder dies)")
    if break_lock and show_token:
        raise click.UsageError("--resume-token only reads the disk; it takes no --break-lock")
    if show_token:
        t = rx.resume_token(where)
        if as_json:
            emit_json(t)
        else:
            click.echo(t["token"])
        return
    if abort:
        a = rx.abort(where, break_lock=break_lock)
        if as_json:
            emit_json(a)
            return
        click.echo(f"dropped the receive of snapshot {a['name']} ({format_size(a['dropped_bytes'])} staged)"
                   + ("; removed the disk it had created" if a["removed_disk"] else ""))
        return
    with contextlib.ExitStack() as stack:
        if input_path is not None:
            inp = stack.enter_context(open(input_path, "rb"))
        elif sys.stdin.isatty():
            inp = _NoTerminal()
        else:
            inp = sys.stdin.buffer
        bar = stack.enter_context(Progress(quiet, phases=PHASES))
        s = rx.receive(where, inp, resume=resume, progress=bar, break_lock=break_lock)
    if as_json:
        emit_json(s.to_dict())
        return
    kind = f"incremental from {s.base}" if s.base else "full"
    if s.resumed_from:
        kind += f", resumed at byte {s.resumed_from}"
    click.echo(f"received snapshot {s.name} into {disk} ({kind}): {format_size(s.data_bytes)} of data and "
               f"{format_size(s.zero_bytes)} of zeros in {s.seconds:.2f} s ({_rate(s.stream_bytes, s.seconds)})")
