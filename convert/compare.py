"""``--verify``: a vdisk state against an image, byte for byte, through qemu.

Both sides are read whole, in chunks, the image through a qemu-nbd export
(so any format qemu reads, internal snapshots included) and the disk
in-process; ranges both sides report as holes are not read. The first
difference fails with :class:`VerifyFailed`, naming the offset.
"""

from __future__ import annotations

from vdisk.errors import VdiskError
from vdisk.snapshots.verify_runs import subtract

from .qemu import Export

CHUNK_BYTES = 4 << 20


class VerifyFailed(VdiskError):
    """A converted or exported state differs from its source."""

    exit_code = 1


def compare(view, src: Export, what: str) -> int:
    """Compare ``view`` (a disk or snapshot view) with ``src``; bytes compared."""
    if src.size != view.size:
        raise VerifyFailed(f"{what}: sizes differ ({view.size} in the disk, {src.size} in the image)")
    ext = view.block_status(0, view.size)
    data = [(e.offset, e.offset + e.length) for e in ext if e.allocated]
    # A hole in the disk must read as zeros in the image; where qemu knows
    # the image reads zeros, nothing needs reading at all.
    holes = subtract([(e.offset, e.offset + e.length) for e in ext if not e.allocated], src.zero_ranges())
    compared = 0
    for start, end in data:
        for pos in range(start, end, CHUNK_BYTES):
            n = min(CHUNK_BYTES, end - pos)
            a, b = view.read(pos, n), src.pread(n, pos)
            if a != b:
                first = next(i for i in range(n) if a[i] != b[i])
                raise VerifyFailed(f"{what}: differs at byte {pos + first}")
            compared += n
    for start, end in holes:
        for pos in range(start, end, CHUNK_BYTES):
            n = min(CHUNK_BYTES, end - pos)
            b = src.pread(n, pos)
            if b.count(0) != n:
                first = next(i for i in range(n) if b[i])
                raise VerifyFailed(f"{what}: differs at byte {pos + first} (a hole in the disk)")
            compared += n
    return compared
