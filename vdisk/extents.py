"""Extent maps: ranges of one block address space mapped onto another.

Both disk maps are extent maps over a B+tree whose key is the first address
of an extent and whose value packs ``(target, length)`` into one u64:
``target << 24 | length``. So a 1 MiB write costs one entry, not 256, and the
tree stays small. Lengths are at most ``MAX_LEN`` blocks; longer runs take
several entries.

Extents never overlap. :meth:`ExtentMap.map` joins a new extent with the one
before or after it when both source and target are contiguous, so sequential
writes made in small pieces still end up as one entry.
"""

from __future__ import annotations

from vdisk.btree import BTree
from vdisk.errors import IntegrityError

LEN_BITS = 24
MAX_LEN = (1 << LEN_BITS) - 1
# Targets (VBAs, PBAs) fill the other 40 bits of the u64 value.
MAX_TARGET = 1 << (64 - LEN_BITS)


def pack(target: int, length: int) -> int:
    return target << LEN_BITS | length


def unpack(value: int) -> tuple[int, int]:
    return value >> LEN_BITS, value & MAX_LEN


class ExtentMap:
    """``start -> (target, length)`` extents on one B+tree."""

    __slots__ = ("tree",)

    def __init__(self, tree: BTree):
        self.tree = tree

    def pieces(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """Mapped pieces ``(source, target, length)`` inside [start, start+count)."""
        end = start + count
        out = []
        for k, v in self.tree.items_from_floor(start, end):
            t, n = v >> LEN_BITS, v & MAX_LEN
            if k < start:
                if k + n > start:
                    out.append((start, t + start - k, min(end, k + n) - start))
            else:
                out.append((k, t, min(end, k + n) - k))
        return out

    def punch(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """Unmap [start, start+count); return the pieces that were mapped there."""
        end = start + count
        tree = self.tree
        removed = []
        for k, v in tree.items_from_floor(start, end):
            t, n = v >> LEN_BITS, v & MAX_LEN
            if k < start:
                if k + n <= start:
                    continue
                removed.append((start, t + start - k, min(end, k + n) - start))
                tree.insert(k, pack(t, start - k))
            else:
                removed.append((k, t, min(end, k + n) - k))
                tree.delete(k)
            if k + n > end:
                tree.insert(end, pack(t + end - k, k + n - end))
        return removed

    def assign_blocks(self, items: list[tuple[int, int]], runs_only: bool = False) -> list[int]:
        """Point each block ``source`` of ``items`` (``(source, target)``
        pairs in ascending source order, each source once) at its target,
        whatever it mapped before; returns the old targets of those that
        were mapped, in order.

        The batch form of a punch and a one-block map per item, with the
        same result (extents joined as :meth:`map` joins them): the entries
        the change needs - the old extents' pieces before and after each
        block, the blocks, and an untouched neighbour a block continues -
        are computed from the tree as it is, joined, and written with one
        ``insert_sorted``; keys a join swallowed go with one
        ``delete_sorted``. For the recent writes (vdisk/recent.py): the
        running point's new VBAs after a snapshot, and the rewritten blocks'
        new PBAs. With ``runs_only`` a lone block is not joined with an
        untouched entry beside it (a rewritten block's new target rarely
        continues theirs, and looking costs two descents); a run of blocks in the batch still is (like :meth:`map`).
        """
        if not items:
            return []
        targets = [t for _s, t in items]
        if min(targets) < 0 or max(targets) + 1 > MAX_TARGET:
            bad = next(t for t in targets if t < 0 or t + 1 > MAX_TARGET)
            raise IntegrityError(f"extent target {bad}+1 is past the limit {MAX_TARGET}")
        tree = self.tree
        srcs = [s for s, _t in items]
        old: list[int] = []
        ups: dict[int, int] = {}
        cut_before = set()       # sources with an old extent's piece right before them
        # (start, end, target of start): what is left of the old extent after the last item.
        tk = tend = tt = -1
        for (src, target), e in zip(items, tree.floors(srcs)):
            if not tk <= src < tend:
                tk = tend = -1
                if e is not None:
                    k, v = e
                    n = v & MAX_LEN
                    if src < k + n:
                        tk, tend, tt = k, k + n, v >> LEN_BITS
            if tk >= 0:
                old.append(tt + src - tk)
                if tk < src:
                    ups[tk] = tt << LEN_BITS | (src - tk)
                    cut_before.add(src)
                if src + 1 < tend:
                    tt += src + 1 - tk
                    tk = src + 1
                    ups[tk] = tt << LEN_BITS | (tend - tk)
                else:
                    tk = tend = -1
            ups[src] = target << LEN_BITS | 1
        # An old piece's outer neighbour is its extent's, joined already; a
        # block may continue the untouched entry before or after it. Both
        # look-ups go to the tree as two batches of floors.
        new = dict(items)
        before, after = [], []
        for src, target in items:
            if runs_only and new.get(src - 1) != target - 1 and new.get(src + 1) != target + 1:
                continue
            if src > 0 and src not in cut_before and src - 1 not in new:
                before.append((src, target))
            if src + 1 not in ups:
                after.append((src, target))
        if before:
            for (src, target), e in zip(before, tree.floors([s - 1 for s, _t in before])):
                if e is not None and e[0] not in ups:
                    k, v = e
                    n = v & MAX_LEN
                    if k + n == src and (v >> LEN_BITS) + n == target and n < MAX_LEN:
                        ups[k] = v
        if after:
            for (src, target), e in zip(after, tree.floors([s + 1 for s, _t in after])):
                if e is not None and e[0] == src + 1:
                    nv = e[1]
                    if nv >> LEN_BITS == target + 1 and (nv & MAX_LEN) < MAX_LEN:
                        ups[src + 1] = nv
        # Joined in key order: an entry continuing the one before it in both
        # source and target (within MAX_LEN) is swallowed by it, as map() does.
        out: list[list[int]] = []
        gone: list[int] = []
        pk = pv = -1
        for k in sorted(ups):
            v = ups[k]
            if out:
                pn = pv & MAX_LEN
                if pk + pn == k and (pv >> LEN_BITS) + pn == v >> LEN_BITS and pn + (v & MAX_LEN) <= MAX_LEN:
                    pv += v & MAX_LEN
                    out[-1][1] = pv
                    gone.append(k)
                    continue
            pk, pv = k, v
            out.append([k, v])
        tree.insert_sorted([(k, v) for k, v in out])
        if gone:
            tree.delete_sorted(gone)
        return old

    def map(self, start: int, target: int, count: int):
        """Map [start, start+count) -> [target, ...); the range must be unmapped."""
        if target < 0 or target + count > MAX_TARGET:
            # Packed, the target would spill into the length bits and map
            # other blocks; callers check first, this is the last line.
            raise IntegrityError(f"extent target {target}+{count} is past the limit {MAX_TARGET}")
        tree = self.tree
        while count > 0:
            n = min(count, MAX_LEN)
            key, t, length = start, target, n
            prev = tree.floor(start - 1) if start > 0 else None
            if prev is not None:
                k, v = prev
                pt, pn = v >> LEN_BITS, v & MAX_LEN
                if k + pn == start and pt + pn == target and pn + n <= MAX_LEN:
                    key, t, length = k, pt, pn + n
            nxt = tree.get(start + n)
            if nxt is not None:
                nt, nn = nxt >> LEN_BITS, nxt & MAX_LEN
                if nt == target + n and length + nn <= MAX_LEN:
                    tree.delete(start + n)
                    length += nn
            tree.insert(key, pack(t, length))
            start += n
            target += n
            count -= n

    def extents(self, start: int = 0):
        """Every extent ``(source, target, length)`` from ``start`` on, in order."""
        for k, v in self.tree.items(start):
            yield k, v >> LEN_BITS, v & MAX_LEN
