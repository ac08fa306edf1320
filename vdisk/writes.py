"""The write path and its ownership rule (docs/ARCHITECTURE.md, "Write path").

New data goes to newly allocated PBAs, never over live data; then the maps
change: a block whose VBA was born after the running point's newest
snapshot keeps its VBA and only moves (VBA -> PBA), any other gets a new VBA
and the LBA tree changes copy-on-write, leaving the old VBA to the snapshot.
Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

import blake3

from vdisk.errors import NoSpace, StorageError

from .extents import LEN_BITS, MAX_LEN, MAX_TARGET
from .names import CSUM_BYTES

# Writes at least this large start their write-back at once (see DataStore.start_writeback).
EARLY_WRITEBACK_BYTES = 256 << 10


class Line(NamedTuple):
    """A writable LBA -> VBA tree and the counters its writes use.

    The running point is one; an online conversion's anchor is another
    (vdisk/anchor.py). Ownership is per line: a VBA at or above the line's
    watermark was born after its newest snapshot and belongs to it alone.
    ``origin`` serves the ranges the line does not map (None: zeros).
    """

    lba: object             # ExtentMap
    counters: object        # .vba_next, .vba_watermark (fmt.State, fmt.AnchorRecord)
    vba_limit: int          # its VBAs stay below this
    origin: object          # .read(offset, length) -> bytes, or None


class WritePath:
    """Writing and unmapping blocks, mixed into :class:`vdisk.disk.Disk`."""

    def write(self, offset: int, data) -> None:
        """Write bytes at any offset; acknowledged, durable at the next flush."""
        self._write_to(None, offset, data)

    def _write_to(self, which: str | None, offset: int, data) -> None:
        """Write into the running point (``which`` None) or another line (see _line)."""
        self.check_writable()
        length = len(data)
        self._check_range(offset, length)
        if length == 0:
            return
        bs = self.block_size
        with self._lock:
            self._check_open()
            line = self._line(which)
            b0 = offset // bs
            b1 = -(-(offset + length) // bs)
            head = offset - b0 * bs
            if head or (offset + length) % bs:
                buf = bytearray(b1 * bs - b0 * bs)
                view = memoryview(buf)
                # Only the edge blocks need their old contents.
                self._read_blocks(line.lba, b0, 1, view[:bs], line.origin)
                if b1 - 1 > b0:
                    self._read_blocks(line.lba, b1 - 1, 1, view[-bs:], line.origin)
                buf[head:head + length] = data
                data = buf
            self._write_blocks(b0, memoryview(data).cast("B"), line)

    def _line(self, which: str | None) -> "Line":
        """Where a write lands: the running point, unless a layer above names another."""
        if which is not None:
            raise ValueError(f"no write line {which!r}")
        return Line(self._lba, self.state, MAX_TARGET, self._origin_of_running_point())

    def _origin_of_running_point(self):
        return None

    def _write_blocks(self, b0: int, data: memoryview, line: "Line"):
        bs = self.block_size
        n = len(data) // bs
        if line.counters.vba_next + n > line.vba_limit and not self._fits(line, b0, n):
            if line.vba_limit == MAX_TARGET:
                raise NoSpace(f"disk {self.location} has used up its {MAX_TARGET} virtual block addresses")
            raise NoSpace(f"disk {self.location}: the conversion has used up the virtual block addresses "
                          f"reserved for it ({line.vba_limit})")
        with self.changing(logged=True):
            pieces = self.alloc.allocate(n)
        store = self._data
        try:
            pos = 0
            for pba, count in pieces:
                store.write(data[pos * bs:(pos + count) * bs], pba * bs)
                if count * bs >= EARLY_WRITEBACK_BYTES:
                    store.start_writeback(pba * bs, count * bs)
                pos += count
        except OSError as e:
            # Only new, unmapped PBAs were written: the write fails as a
            # whole and every acknowledged write is as it was.
            for pba, count in pieces:
                self.alloc.release(pba, count)
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left where {self.location} is stored") from None
            raise StorageError(f"writing the data of {self.location} failed: {e.strerror or e}") from None
        with self.changing(logged=True):
            self._map_written(b0, n, data, pieces, line)

    def _fits(self, line: "Line", b0: int, n: int) -> bool:
        """Whether the new VBAs a write of [b0, b0+n) needs fit below the line's
        limit: blocks born after its newest snapshot keep theirs."""
        if self._lba_recent_in(line.lba, b0, n):
            with self.changing(logged=True):
                self.settle()
        wm = line.counters.vba_watermark
        kept = sum(ln for _s, vba, ln in split_at_watermark(line.lba.pieces(b0, n), wm) if vba >= wm)
        return line.counters.vba_next + n - kept <= line.vba_limit

    def _map_written(self, b0: int, n: int, data: memoryview, pieces: list[tuple[int, int]], line: "Line"):
        bs = self.block_size
        if n == 1:
            sums = [blake3.blake3(data).digest(CSUM_BYTES)]
        else:
            h = blake3.blake3
            sums = [h(data[i:i + bs]).digest(CSUM_BYTES) for i in range(0, n * bs, bs)]
        # Recorded first: mapping it may end in the automatic commit, which
        # holds this write and starts the next epoch without its record.
        self._log_write(line, b0, pieces, sums)
        self._map_sums(b0, n, sums, pieces, line)

    def _map_sums(self, b0: int, n: int, sums: list[bytes], pieces: list[tuple[int, int]], line: "Line"):
        """Map blocks [b0, b0+n) of ``line``, written at ``pieces`` with checksums
        ``sums``: the write's change to the maps (the redo log's replay too)."""
        if n == 1:
            self._map_one(b0, pieces[0][0], sums[0], line)
            return
        counters, lba = line.counters, line.lba
        wm = counters.vba_watermark
        csum_items = []
        if self._lba_recent_in(lba, b0, n):
            self.settle()
        current = list(split_at_watermark(lba.pieces(b0, n), wm))
        if self._recent and self._recent_in([p for p in current if p[1] >= wm]):
            # The VBAs below are remapped in the trees: their recent writes go there first.
            self.settle()
        # Split [b0, b0+n) into runs that keep their VBA and runs that need new ones.
        fresh_runs = []
        pos = b0
        for s, vba, ln in current:
            if s > pos:
                fresh_runs.append((pos, s - pos))
            if vba >= wm:
                old = self._vba.punch(vba, ln)
                for _v, pba, c in old:
                    self.alloc.release(pba, c)
                self._map_vbas(vba, _slice_pieces(pieces, s - b0, ln))
                csum_items.extend(zip(range(vba, vba + ln), sums[s - b0:s - b0 + ln]))
            else:
                fresh_runs.append((s, ln))
            pos = s + ln
        if pos < b0 + n:
            fresh_runs.append((pos, b0 + n - pos))
        for s, ln in _join_runs(fresh_runs):
            vba = counters.vba_next
            counters.vba_next += ln
            lba.punch(s, ln)
            lba.map(s, vba, ln)
            self._map_vbas(vba, _slice_pieces(pieces, s - b0, ln))
            csum_items.extend(zip(range(vba, vba + ln), sums[s - b0:s - b0 + ln]))
        if len(csum_items) == 1:
            self._csum.insert(*csum_items[0])
        else:
            csum_items.sort()
            self._csum.insert_sorted(csum_items)
        self._after_work(n)

    def _map_one(self, lba: int, pba: int, csum: bytes, line: "Line"):
        """The common NBD write, one block: the VBA -> PBA and checksum go
        to the recent table (vdisk/recent.py), and so does a new VBA of the
        running point's (other lines map it in their LBA tree now)."""
        counters, lba_map = line.counters, line.lba
        deferred = self._recent_lba if lba_map is self._lba and self._anchor is None else None
        vba = deferred.get(lba) if deferred else None
        if vba is None:
            e = lba_map.tree.floor(lba)
            if e is not None:
                k, v = e
                if lba < k + (v & MAX_LEN):
                    vba = (v >> LEN_BITS) + lba - k
        recent = self._recent
        if vba is not None and vba >= counters.vba_watermark:
            # Born after the line's newest snapshot: it keeps its VBA.
            prev = recent.get(vba)
            if prev is not None:
                # Written since the last commit and never referenced by one.
                self.alloc.release(prev[0], 1)
        else:
            vba = counters.vba_next
            counters.vba_next += 1
            if deferred is not None:
                deferred[lba] = vba
            else:
                lba_map.punch(lba, 1)
                lba_map.map(lba, vba, 1)
        recent[vba] = (pba, csum)
        self._after_work(1)

    def _map_vbas(self, vba: int, pbas: list[tuple[int, int]]):
        for pba, count in pbas:
            self._vba.map(vba, pba, count)
            vba += count

    def _unmap_blocks(self, b0: int, n: int, line: "Line | None" = None) -> int:
        """Unmap LBAs [b0, b0+n) of a line (the running point's by default);
        returns the number of extents it touched."""
        line = line or self._line(None)
        wm = line.counters.vba_watermark
        if self._lba_recent_in(line.lba, b0, n):
            self.settle()
        pieces = line.lba.punch(b0, n)
        for _s, vba, ln in split_at_watermark(pieces, wm):
            if vba >= wm:
                self.forget_vbas(vba, ln)
        return len(pieces)

    def forget_vbas(self, vba: int, count: int) -> int:
        """Drop VBAs no tree maps any more: their PBAs and checksums.

        Returns the number of blocks released; VBAs already gone are skipped.
        """
        if self._recent:
            self.settle()
        released = 0
        for _v, pba, c in self._vba.punch(vba, count):
            self.alloc.release(pba, c)
            released += c
        csum = self._csum
        for v, _ in list(csum.items(vba, vba + count)):
            csum.delete(v)
        return released


def split_at_watermark(pieces, wm: int):
    """Split (lba, vba, count) pieces whose VBAs straddle the watermark.

    An extent can run across it when a write born after the newest snapshot
    happens to continue a snapshot's VBAs; its two halves have different
    owners, so they must be judged separately (judging by the first VBA
    leaked the newer half, or rewrote snapshot blocks in place).
    """
    for s, vba, ln in pieces:
        if vba < wm < vba + ln:
            head = wm - vba
            yield s, vba, head
            yield s + head, wm, ln - head
        else:
            yield s, vba, ln


def _slice_pieces(pieces: list[tuple[int, int]], start: int, count: int) -> list[tuple[int, int]]:
    """The PBAs of blocks [start, start+count) of a write allocated as ``pieces``."""
    out = []
    pos = 0
    for pba, n in pieces:
        a, b = max(start, pos), min(start + count, pos + n)
        if a < b:
            out.append((pba + a - pos, b - a))
        pos += n
        if pos >= start + count:
            break
    return out


def _join_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for s, n in runs:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((s, n))
    return out
