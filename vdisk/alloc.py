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
  memory, so consecutive writes get consecutive PBAs. Extents are taken from
  the free tree in batches (the spare list: one walk and one
  ``delete_sorted`` per batch, sized by what the last commit interval
  took), because after random rewrites the free tree is thousands of
  one-block extents and nearly every write needs a new one. What the
  allocator holds (the spare and the unused rest of the current extent) was
  free in the committed state, is counted free, and goes back to the free
  tree at each commit.

At a commit the pending frees and what goes back are sorted and joined into
runs; a piece overlapping another or a free extent is a double free
(IntegrityError). Few runs against a big tree are added one by one (a flush
every few writes must not walk the tree); many are merged with the tree's
extents in one ordered pass: one walk, one ``delete_sorted``, one
``insert_sorted``. Either way prepare_commit returns the free extents that
hold this commit's frees, so the commit punches the long ones without
looking them up again.
"""

from __future__ import annotations

from itertools import islice

from vdisk.btree import BTree
from vdisk.errors import IntegrityError, NoSpace

from .extents import MAX_TARGET

GROW_BLOCKS = 2048  # grow the PBA space 8 MiB (at 4 KiB blocks) at a time
APART_GROW_BLOCKS = 64  # ... for the redo log, when no free extent is at hand
# Free extents taken from the free tree at once: first in a commit interval as
# many as the previous one took, then SPARE_MIN doubling up to SPARE_MAX
# (about a leaf of the free tree), so that a flush every few writes takes
# about what it uses and puts back little.
SPARE_MIN = 8
SPARE_MAX = 256
# At commit, the pieces are merged with the free tree in one pass once there
# are at least 1/MERGE_RATIO as many as the tree has extents. Measured: one
# by one costs ~4 us a piece; the pass ~1.5 us a piece or tree extent (so it
# wins when the tree is small, as after a stream of random overwrites, which
# take nearly every extent it has: the pieces are those frees and the spare).
MERGE_RATIO = 2
# Writes of at least this many blocks get them in one piece (see _take_contiguous).
CONTIGUOUS_BLOCKS = 16
CONTIGUOUS_LOOK = 256            # free extents it looks at beyond the spare

# Where a piece of a commit's free space comes from: the free tree, the rest of
# the current extent, a free by this commit, the spare.
_TREE, _HELD, _FREED, _SPARE = 0, 1, 2, 4
_P = 45                          # a piece packed in an int: start << _P | length << 3 | tag
_LEN = (1 << (_P - 3)) - 1


class Allocator:
    def __init__(self, free: BTree, pba_end: int):
        self.free = free
        self.end = pba_end
        self._cur = [0, 0]       # [next, stop) being consumed
        self._big = [0, 0]       # ... by large writes (see _take_contiguous)
        self._apart = [0, 0]     # ... by the redo log (see allocate_apart)
        self._cursor = 0
        self._spare: list[tuple[int, int]] = []   # taken from the free tree, last one next
        self._spare_blocks = 0
        self._batch = SPARE_MIN  # extents the next refill takes
        self._grow = SPARE_MIN   # ... and the one after it
        self._taken = 0          # extents taken from the free tree since the last commit
        self.pending: list[tuple[int, int]] = []

    def allocate(self, count: int) -> list[tuple[int, int]]:
        """``count`` blocks as a list of ``(pba, length)`` pieces, in order."""
        out = []
        if count >= CONTIGUOUS_BLOCKS:
            big = self._big
            if big[1] - big[0] < count:
                self._take_contiguous(count)
            if big[1] - big[0] >= count:
                big[0] += count
                return [(big[0] - count, count)]
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

    def allocate_apart(self, count: int) -> list[tuple[int, int]]:
        """``count`` blocks out of the data's way: the redo log's (vdisk/journal.py).

        From an extent of their own, so that data written in order between
        flushes stays in order on disk: the free extent farthest from the
        cursor among those the allocator holds, else a little new space,
        consumed from its top down (the one free extent of a young disk
        keeps its low blocks for data, and its freed runs can join it).
        """
        out = []
        a = self._apart
        while count > 0:
            if a[0] >= a[1]:
                if not self._spare:
                    self._refill()
                if self._spare:
                    start, length = self._spare.pop(0)
                    self._spare_blocks -= length
                    self._taken += 1
                else:
                    start, length = self.end, max(count, APART_GROW_BLOCKS)
                    if start + length > MAX_TARGET:
                        for pba, n in out:
                            self.release(pba, n)
                        raise NoSpace(f"the data file reached its limit of {MAX_TARGET} blocks")
                    self.end += length
                a[:] = [start, start + length]
            take = min(count, a[1] - a[0])
            a[1] -= take
            out.append((a[1], take))
            count -= take
        return out

    def _take_extent(self, want: int):
        spare = self._spare
        if not spare:
            self._refill()
        if spare:
            start, length = spare.pop()
            self._spare_blocks -= length
            self._taken += 1
        else:
            start, length = self.end, max(want, GROW_BLOCKS)
            if start + length > MAX_TARGET:
                length = MAX_TARGET - start
                if length < want:
                    raise NoSpace(f"the data file reached its limit of {MAX_TARGET} blocks")
            self.end += length
        self._cur[:] = [start, start + length]
        self._cursor = start

    def _take_contiguous(self, count: int):
        """Make the large writes' extent one that holds ``count`` blocks in one piece.

        Issue 13: after random rewrites the free space is mostly one-block
        holes, and next-fit gave a 1 MiB write ~120 pieces: as many pwrites
        and VBA extents, and a later sequential read as scattered. Large
        writes therefore consume an extent of their own: a free one long
        enough (the spare, then a bounded look on in the free tree), else
        new space at the end of the data file, while small writes keep
        consuming the holes (the small writes' extent is not touched). The
        file may outgrow the data by the holes' size meanwhile, no more:
        small writes use them up, and what a large write frees is long
        extents again. The rest of the previous large extent goes to the
        spare.
        """
        spare = self._spare
        for i in range(len(spare) - 1, -1, -1):
            if spare[i][1] >= count:
                start, length = spare.pop(i)
                self._spare_blocks -= length
                self._taken += 1
                break
        else:
            # A bounded look further on in the free tree (a write this large
            # costs far more than the walk); then new space.
            for start, length in islice(self.free.items(self._cursor), CONTIGUOUS_LOOK):
                if length >= count:
                    self.free.delete(start)
                    self._taken += 1
                    break
            else:
                start, length = self.end, max(count, GROW_BLOCKS)
                if start + length > MAX_TARGET:
                    return              # no room at the end: pieces it is
                self.end += length
        nxt, stop = self._big
        if nxt < stop:
            spare.append((nxt, stop - nxt))
            self._spare_blocks += stop - nxt
        self._big[:] = [start, start + length]

    def _refill(self):
        """Take the next batch of free extents from the cursor on (wrapping to the start)."""
        free = self.free
        batch = list(islice(free.items(self._cursor), self._batch)) or list(islice(free.items(), self._batch))
        if not batch:
            return
        free.delete_sorted([start for start, _ in batch])
        batch.reverse()
        self._spare[:] = batch
        self._spare_blocks = sum(n for _, n in batch)
        self._batch = self._grow
        self._grow = min(self._grow * 2, SPARE_MAX)

    def held(self) -> list[tuple[int, int]]:
        """The free extents the allocator holds outside the free tree (spare, rests of the current ones).

        Free in the committed state and counted free; they go back to the
        free tree at the next commit.
        """
        out = self._spare[::-1]
        for nxt, stop in (self._big, self._apart, self._cur):
            if nxt < stop:
                out.append((nxt, stop - nxt))
        return out

    def claim(self, pba: int, count: int):
        """Take ``[pba, pba + count)`` out of the free space (the redo log's replay).

        The blocks a logged write used were free in the committed state (or
        past its end: the space grew since); replay re-allocates exactly
        them. Called on a freshly loaded allocator only, before it hands
        anything out, so they are in the free tree or past ``end``, and a
        claim of anything else is damage. Space the original run grew into
        and did not use is free.
        """
        stop = pba + count
        if stop > self.end:
            low = max(pba, self.end)
            if low > self.end:
                # Joined with its neighbours like any run going back to the tree.
                self._fold([self.end << _P | (low - self.end) << 3 | _HELD])
            self.end = stop
        else:
            low = stop
        free = self.free
        while pba < low:
            # One piece can span free extents that touch: the writer took
            # them one after the other, and its allocation joined the pieces.
            e = free.floor(pba)
            if e is None or e[0] + e[1] <= pba:
                raise IntegrityError(f"the redo log names PBAs {pba}+{low - pba}, which were not free: "
                                     f"run vdisk verify")
            start, n = e
            end = min(start + n, low)
            free.delete(start)
            if start < pba:
                free.insert(start, pba - start)
            if end < start + n:
                free.insert(end, start + n - end)
            pba = end

    def release(self, pba: int, count: int):
        """Free blocks once the change that stops using them is committed."""
        if count > 0:
            self.pending.append((pba, count))

    def prepare_commit(self) -> list[tuple[int, int]]:
        """Fold pending frees and what the allocator holds into the free tree.

        Returns the free extents, as the free tree now holds them, that
        contain blocks freed by this commit: the ones worth punching in the
        data file once the commit is durable.
        """
        # Pieces are packed ints (start, length, tag), not tuples: a commit
        # after many writes has tens of thousands, and as many live tuples
        # would cost full garbage collections of the whole node cache.
        pieces = [p << _P | n << 3 | _FREED for p, n in self.pending]
        pieces.extend(p << _P | n << 3 | _SPARE for p, n in self._spare)
        self.pending = []
        for held in (self._big, self._apart):
            nxt, stop = held
            if nxt < stop:
                pieces.append(nxt << _P | (stop - nxt) << 3 | _HELD)
            held[:] = [0, 0]
        nxt, stop = self._cur
        if nxt < stop:
            pieces.append(nxt << _P | (stop - nxt) << 3 | _HELD)
            self._cursor = nxt
        self._cur[:] = [0, 0]
        self._spare = []
        self._spare_blocks = 0
        self._batch = max(SPARE_MIN, min(SPARE_MAX, self._taken))
        self._grow = SPARE_MIN
        self._taken = 0
        return self._fold(pieces)

    def _fold(self, pieces: list[int]) -> list[tuple[int, int]]:
        if not pieces:
            return []
        pieces.sort()
        if len(pieces) * MERGE_RATIO < len(self.free):
            return self._add_runs(*_join(pieces))
        return self._merge_runs(pieces)

    def _add_runs(self, starts: list[int], ends: list[int], tags: list[int]) -> list[tuple[int, int]]:
        """Add joined runs to the free tree one by one: a descent or three each.

        A spare extent that no other piece touched goes back as it was taken,
        without looking at its neighbours: they were not free when it was
        taken, and only the runs joined with it could have changed that.
        """
        free = self.free
        out = []
        spare = []
        last = -1                                    # start of the extent the last run made
        for start, end, tag in zip(starts, ends, tags):
            if tag == _SPARE:
                spare.append((start, end - start))
                continue
            # The extent at or before the run, and any starting inside it or at its end.
            near = free.items_from_floor(start, end + 1)
            if near and near[0][0] <= start:
                p, n = near.pop(0)
                if p + n > start:
                    _twice(start, (p, n))
                if p + n == start:
                    start = p
            if near:
                p, n = near[0]
                if p < end:
                    _twice(p, (p, n))
                free.delete(p)                       # it starts at ``end``: it joins the run
                end = p + n
            free.insert(start, end - start)
            if start == last:                        # it grew the extent an earlier run made
                prev_tag = out.pop()[2]
                tag |= prev_tag
            out.append((start, end, tag))
            last = start
        if len(spare) > SPARE_MIN * 4:
            free.insert_sorted(spare)       # merges each leaf it touches whole
        else:
            for p, n in spare:
                free.insert(p, n)
        return [(s, e - s) for s, e, tag in out if tag & _FREED]

    def _merge_runs(self, pieces: list[int]) -> list[tuple[int, int]]:
        """Merge sorted pieces with the free tree in one ordered pass."""
        free = self.free
        lo = pieces[0] >> _P
        hi = max((x >> _P) + ((x >> 3) & _LEN) for x in pieces)
        tree = free.items_from_floor(lo, hi + 1)
        had = dict(tree)
        pieces.extend(p << _P | n << 3 | _TREE for p, n in tree)
        del tree
        pieces.sort()
        starts, ends, tags = _join(pieces)
        kept = set(starts)
        free.delete_sorted([p for p in had if p not in kept])
        free.insert_sorted([(s, e - s) for s, e in zip(starts, ends) if had.get(s) != e - s])
        return [(s, e - s) for s, e, tag in zip(starts, ends, tags) if tag & _FREED]

    def pending_blocks(self) -> int:
        """Blocks released and free once the next commit is durable."""
        return sum(n for _p, n in self.pending)

    def free_blocks(self) -> int:
        return (sum(n for _, n in self.free.items()) + self._spare_blocks
                + sum(stop - nxt for nxt, stop in (self._cur, self._big, self._apart)))


def _join(pieces: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Sorted packed pieces as disjoint runs (starts, ends, tags), touching ones joined.

    A piece that overlaps an earlier one is a double free.
    """
    starts, ends, tags = [], [], []
    last_end = -1
    for x in pieces:
        p = x >> _P
        if p <= last_end:
            if p < last_end:
                _twice(p, (starts[-1], last_end - starts[-1]))
            last_end = ends[-1] = p + ((x >> 3) & _LEN)
            tags[-1] |= x & 7
        else:
            last_end = p + ((x >> 3) & _LEN)
            starts.append(p)
            ends.append(last_end)
            tags.append(x & 7)
    return starts, ends, tags


def _twice(pba: int, extent: tuple[int, int]):
    raise IntegrityError(f"PBA {pba} freed twice (it is inside free extent {extent}): run vdisk verify")
