"""Extent-based allocator of the PBA space (the data file's blocks).

Free space is the B+tree ``free``: first PBA of a free extent -> its length.
It is committed with the maps it pays for, so after a crash the free map and
the maps agree: a block is either referenced or free, never both, never lost.

Two rules protect data:

* A PBA freed by a change is not handed out again before that change is
  durable. Frees wait in ``pending`` and enter the free tree only at
  :meth:`Allocator.prepare_commit`, inside the commit that makes them true;
  nothing allocates between that and the end of the commit.
* Allocation is next-fit from a cursor and consumes one extent at a time in
  memory, so consecutive writes get consecutive PBAs and touch the free tree
  once per extent rather than once per write. The unused rest of the current
  extent goes back to the free tree at each commit.
"""

from __future__ import annotations

from vdisk.btree import BTree
from vdisk.errors import IntegrityError, NoSpace

from .extents import MAX_TARGET

GROW_BLOCKS = 2048  # grow the PBA space 8 MiB (at 4 KiB blocks) at a time


class Allocator:
    def __init__(self, free: BTree, pba_end: int):
        self.free = free
        self.end = pba_end
        self._cur = [0, 0]       # [next, stop) being consumed
        self._cursor = 0
        self.pending: list[tuple[int, int]] = []

    def allocate(self, count: int) -> list[tuple[int, int]]:
        """``count`` blocks as a list of ``(pba, length)`` pieces, in order."""
        out = []
        cur = self._cur
        while count > 0:
            if cur[0] >= cur[1]:
                try:
                    self._take_extent(count)
                except NoSpace:
                    # Nothing is lost: the pieces taken so far are free again
                    # at the next commit, and the write fails as a whole.
                    for pba, n in out:
                        self.release(pba, n)
                    raise
            take = min(count, cur[1] - cur[0])
            if out and out[-1][0] + out[-1][1] == cur[0]:
                out[-1] = (out[-1][0], out[-1][1] + take)
            else:
                out.append((cur[0], take))
            cur[0] += take
            count -= take
        return out

    def _take_extent(self, want: int):
        item = next(self.free.items(self._cursor), None) or next(self.free.items(), None)
        if item is not None:
            start, length = item
            self.free.delete(start)
        else:
            start, length = self.end, max(want, GROW_BLOCKS)
            if start + length > MAX_TARGET:
                length = MAX_TARGET - start
                if length < want:
                    raise NoSpace(f"the data file reached its limit of {MAX_TARGET} blocks")
            self.end += length
        self._cur[:] = [start, start + length]
        self._cursor = start

    def release(self, pba: int, count: int):
        """Free blocks once the change that stops using them is committed."""
        if count > 0:
            self.pending.append((pba, count))

    def prepare_commit(self) -> list[tuple[int, int]]:
        """Fold pending frees and the unused current extent into the free tree.

        Returns the extents freed by this commit, for punching holes in the
        data file once the commit is durable.
        """
        freed = self.pending
        self.pending = []
        for pba, count in freed:
            self._add_free(pba, count)
        nxt, stop = self._cur
        if nxt < stop:
            self._add_free(nxt, stop - nxt)
            self._cursor = nxt
        self._cur[:] = [0, 0]
        return freed

    def _add_free(self, pba: int, count: int):
        free = self.free
        prev = free.floor(pba)
        if prev is not None and prev[0] + prev[1] > pba:
            raise IntegrityError(f"PBA {pba} freed twice (it is inside free extent {prev}): run vdisk verify")
        end = pba + count
        nxt = free.get(end)
        if nxt is not None:
            free.delete(end)
            count += nxt
        if prev is not None and prev[0] + prev[1] == pba:
            free.insert(prev[0], prev[1] + count)
        else:
            free.insert(pba, count)

    def free_blocks(self) -> int:
        return sum(n for _, n in self.free.items()) + (self._cur[1] - self._cur[0])
