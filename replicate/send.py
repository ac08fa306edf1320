"""Sending a snapshot: the replication stream of its change from a base (or of all of it).

The sender asks :func:`vdisk.snapshots.diff.diff` which ranges differ from
BASE to SNAP (from nothing, for a full stream), so it reads only the
changed blocks: the cost follows the change, not the disk. Changed ranges
that SNAP maps are read from SNAP (every block checked against its
checksum, as every read is) and sent as DATA records of at most
:data:`~vdisk.replicate.stream.DATA_CHUNK` bytes - a chunk that reads as
all zeros goes as a ZERO record instead; ranges that are holes in SNAP go
as ZERO records. The stream's format is :mod:`vdisk.replicate.stream`.

Both snapshots are frozen, so the disk may be in use meanwhile (served,
mounted, written): open it read-only beside the writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vdisk.errors import InvalidArgument, quote
from vdisk.names import check_snapshot_lookup
from vdisk.snapshots.diff import EVERYTHING, diff

from . import identity
from .stream import DATA_CHUNK, NO_ID, Header, StreamWriter, decode_token

_ZEROS = bytes(DATA_CHUNK)


@dataclass
class SendSummary:
    name: str
    base: str | None
    size: int
    resume_offset: int
    data_bytes: int
    zero_bytes: int
    records: int
    stream_bytes: int
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def plan(disk, name: str, base: str | None = None, resume_token: str | None = None):
    """(BEGIN header, changed ranges to send) of snapshot ``name`` from ``base``.

    With ``resume_token`` (from the receiver), only the changes at and after
    the offset it names, and only if it names this very stream.
    """
    check_snapshot_lookup(name)
    if base is not None:
        check_snapshot_lookup(base)
    with disk.view():
        rec = disk.snapshot_record(name)
        snap_id = identity.snapshot_id(disk, name)
        base_rec = disk.snapshot_record(base) if base is not None else None
        base_id = identity.snapshot_id(disk, base) if base is not None else NO_ID
    offset = 0
    if resume_token is not None:
        t_snap, t_base, offset = decode_token(resume_token)
        if (t_snap, t_base) != (snap_id, base_id):
            what = f"snapshot {quote(name)}" + (f" from {quote(base)}" if base else " in full")
            raise InvalidArgument(f"the resume token is for another stream than {what} of {disk.path}: "
                                  f"send what the receiving disk was receiving, with the same --from")
        if offset > rec.size:
            raise InvalidArgument(f"the resume token's offset {offset} is past the snapshot's size {rec.size}")
    changes = []
    for c in diff(disk, base if base is not None else EVERYTHING, name).changes:
        end = c.offset + c.length
        if end <= offset:
            continue
        start = max(c.offset, offset)
        changes.append((start, end - start, c.data))
    header = Header(name=name, size=rec.size, block_size=disk.block_size, created_ns=rec.created_ns,
                    snap_id=snap_id, base_name=base, base_id=base_id,
                    base_created_ns=base_rec.created_ns if base_rec else 0, resume_offset=offset,
                    covered_bytes=sum(n for _, n, _ in changes))
    return header, changes


def send(disk, name: str, out, base: str | None = None, resume_token: str | None = None,
         progress=None) -> SendSummary:
    """Write the stream of snapshot ``name`` (from ``base``, or full) to binary file ``out``.

    ``progress(phase, done, total)`` is called as bytes go out (phase
    "send"). Returns what was sent; ``out`` is flushed, not closed.
    """
    t0 = time.monotonic()
    header, changes = plan(disk, name, base, resume_token)
    view = disk.open_snapshot(name)
    w = StreamWriter(out)
    w.begin(header)
    done = 0
    total = header.covered_bytes
    if progress:
        progress("send", 0, total)
    for offset, length, data in changes:
        if not data:
            w.zero(offset, length)
        else:
            end = offset + length
            pos = offset
            while pos < end:
                n = min(DATA_CHUNK - pos % DATA_CHUNK, end - pos)
                chunk = view.read(pos, n)
                if not chunk[0] and not chunk[-1] and chunk == (_ZEROS if n == DATA_CHUNK else bytes(n)):
                    w.zero(pos, n)
                else:
                    w.data(pos, chunk)
                pos += n
                if progress:
                    progress("send", done + pos - offset, total)
        done += length
        if progress:
            progress("send", done, total)
    w.end()
    out.flush()
    return SendSummary(name, base, header.size, header.resume_offset, w.data_bytes, w.zero_bytes, w.records,
                       w.bytes_written, time.monotonic() - t0)
