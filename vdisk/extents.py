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

    def remap_block(self, start: int, target: int) -> int | None:
        """Point the one mapped block ``start`` at ``target``; returns its old
        target, or None (and changes nothing) if ``start`` is unmapped.

        A block that is an extent of its own changes its value in place; one
        inside a longer extent splits it. Unlike :meth:`map` it joins no
        neighbours: a rewritten block's new target rarely continues theirs,
        and looking costs two more descents.
        """
        if target < 0 or target + 1 > MAX_TARGET:
            raise IntegrityError(f"extent target {target}+1 is past the limit {MAX_TARGET}")
        tree = self.tree
        e = tree.floor(start)
        if e is None:
            return None
        k, v = e
        t, n = v >> LEN_BITS, v & MAX_LEN
        if start >= k + n:
            return None
        if k < start:
            tree.insert(k, pack(t, start - k))
        if start + 1 < k + n:
            tree.insert(start + 1, pack(t + start + 1 - k, k + n - start - 1))
        tree.insert(start, pack(target, 1))
        return t + start - k

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
