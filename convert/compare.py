"""``--verify``: a vdisk state against an image, byte for byte, through qemu.

Both sides are read whole, in chunks, the image through a qemu-nbd export
(so any format qemu reads, internal snapshots included) and the disk
in-process; ranges both sides report as holes are not read. The first
difference fails with :class:`VerifyFailed`, naming the offset.
"""

from __future__ import annotations

from vdisk.errors import VdiskError

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
    holes = _subtract([(e.offset, e.offset + e.length) for e in ext if not e.allocated], src.zero_ranges())
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


def _subtract(spans: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` minus ``minus`` (both sorted, disjoint), as sorted spans.

    Called with the disk's holes and the image's known zeros: what is left
    is a hole in the disk that the image might still hold data in.
    """
    out = []
    j = 0
    for a, b in spans:
        while j < len(minus) and minus[j][1] <= a:
            j += 1
        k = j
        while a < b:
            if k < len(minus) and minus[k][0] < b:
                if minus[k][0] > a:
                    out.append((a, minus[k][0]))
                a = max(a, minus[k][1])
                k += 1
            else:
                out.append((a, b))
                break
    return out

