"""Reading a tree: lookups, ordered and reverse scans, floors.

Methods of :class:`~vdisk.btree.tree.BTree`, kept apart from its writes
(:mod:`.writes`) and from the seq rule (:mod:`.tree`). They look in the
forest's node cache before loading, inline: a call per level would cost as
much as the bisect it wraps.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Iterator

from .node import Node

_MISSING = object()


class TreeReads:
    """The read half of :class:`~vdisk.btree.tree.BTree` (a mixin: ``forest`` and ``rec`` are the tree's)."""

    def get(self, key, default=None):
        cache = self.forest.cache
        load = self.forest.load
        node_id = self.rec.root
        node = cache.get(node_id) or load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            node_id = node.vals[i if i > 0 else 0]
            node = cache.get(node_id) or load(node_id)
        keys = node.keys
        j = bisect_left(keys, key)
        if j < len(keys) and keys[j] == key:
            return node.vals[j]
        return default

    def __contains__(self, key) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def _descend(self, key) -> tuple[list, Node]:
        """Path [(inner node, child index)] from the root to the leaf for key."""
        f = self.forest
        cache = f.cache
        path = []
        node_id = self.rec.root
        node = cache.get(node_id) or f.load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            node_id = node.vals[i]
            node = cache.get(node_id) or f.load(node_id)
        return path, node

    def items(self, start=None, stop=None) -> Iterator[tuple]:
        """Entries with ``start <= key < stop`` in key order (bounds optional).

        The tree must not be changed while the iterator is in use; iterate a
        snapshot (whose nodes never change) to read beside writes.
        """
        f = self.forest
        cache = f.cache
        stack = []
        node_id = self.rec.root
        node = cache.get(node_id) or f.load(node_id)
        while not node.leaf:
            i = 0 if start is None else bisect_right(node.keys, start) - 1
            if i < 0:
                i = 0
            stack.append([node, i])
            node_id = node.vals[i]
            node = cache.get(node_id) or f.load(node_id)
        j = 0 if start is None else bisect_left(node.keys, start)
        while True:
            keys = node.keys
            if stop is None or not keys or keys[-1] < stop:
                yield from zip(keys[j:], node.vals[j:])
            else:
                end = bisect_left(keys, stop, j)
                yield from zip(keys[j:end], node.vals[j:end])
                return
            node = self._next_leaf(stack)
            if node is None:
                return
            j = 0

    def _next_leaf(self, stack) -> Node | None:
        f = self.forest
        while stack:
            top = stack[-1]
            if top[1] + 1 < len(top[0].vals):
                top[1] += 1
                node = f.node(top[0].vals[top[1]])
                while not node.leaf:
                    stack.append([node, 0])
                    node = f.node(node.vals[0])
                return node
            stack.pop()
        return None

    def _prev_leaf(self, stack) -> Node | None:
        f = self.forest
        while stack:
            top = stack[-1]
            if top[1] > 0:
                top[1] -= 1
                node = f.node(top[0].vals[top[1]])
                while not node.leaf:
                    stack.append([node, len(node.vals) - 1])
                    node = f.node(node.vals[-1])
                return node
            stack.pop()
        return None

    def items_reverse(self, start=None) -> Iterator[tuple]:
        """Entries with ``key <= start`` (all if None) in descending key order."""
        f = self.forest
        stack = []
        node = f.node(self.rec.root)
        while not node.leaf:
            i = len(node.vals) - 1 if start is None else max(0, bisect_right(node.keys, start) - 1)
            stack.append([node, i])
            node = f.node(node.vals[i])
        j = len(node.keys) if start is None else bisect_right(node.keys, start)
        while True:
            keys, vals = node.keys, node.vals
            for idx in range(j - 1, -1, -1):
                yield keys[idx], vals[idx]
            node = self._prev_leaf(stack)
            if node is None:
                return
            j = len(node.keys)

    def floor(self, key):
        """The entry with the greatest key <= ``key``, or None."""
        # The extent maps call this on every disk request: descend without
        # keeping the path, which only a floor in an earlier leaf needs.
        cache = self.forest.cache
        load = self.forest.load
        node_id = self.rec.root
        node = cache.get(node_id) or load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            node_id = node.vals[i if i > 0 else 0]
            node = cache.get(node_id) or load(node_id)
        j = bisect_right(node.keys, key)
        if j:
            return node.keys[j - 1], node.vals[j - 1]
        return self._floor_before_leaf(key)

    def floors(self, keys) -> list:
        """``floor(key)`` of each of ``keys``, given in ascending order.

        A batch of block changes (vdisk/extents.py ``assign_blocks``) asks
        for thousands of floors at once, most of them in a leaf the one
        before found: one descent per leaf they fall in, then a bisect
        each. A leaf's range ends at the separator right of its path; a key
        past it descends again.
        """
        cache = self.forest.cache
        load = self.forest.load
        root = self.rec.root
        out = []
        append = out.append
        lkeys = lvals = None
        hi = None                       # the current leaf holds keys below this (None: no bound)
        for key in keys:
            if lkeys is None or (hi is not None and key >= hi):
                hi = None
                node = cache.get(root) or load(root)
                while not node.leaf:
                    nkeys = node.keys
                    i = bisect_right(nkeys, key) - 1
                    if i < 0:
                        i = 0
                    if i + 1 < len(nkeys):
                        hi = nkeys[i + 1]
                    node_id = node.vals[i]
                    node = cache.get(node_id) or load(node_id)
                lkeys, lvals = node.keys, node.vals
            j = bisect_right(lkeys, key)
            append((lkeys[j - 1], lvals[j - 1]) if j else self._floor_before_leaf(key))
        return out

    def _floor_before_leaf(self, key):
        """floor() when ``key`` is below its leaf's first key: the floor ends an earlier leaf."""
        # items_reverse without the generator; _prev_leaf moves the path's
        # child indexes, so they become lists.
        path, node = self._descend(key)
        stack = [list(step) for step in path]
        j = bisect_right(node.keys, key)
        while not j:
            node = self._prev_leaf(stack)
            if node is None:
                return None
            j = len(node.keys)
        return node.keys[j - 1], node.vals[j - 1]

    def items_from_floor(self, key, stop) -> list[tuple]:
        """``floor(key)`` (if below ``stop``) and every entry after it below ``stop``, as a list.

        What an extent map needs to find the extents overlapping [key, stop)
        (the one starting at or before ``key`` and those starting inside), in
        one descent instead of a ``floor`` and an ``items`` call.
        """
        f = self.forest
        cache = f.cache
        stack = []
        node_id = self.rec.root
        node = cache.get(node_id) or f.load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            stack.append([node, i])
            node_id = node.vals[i]
            node = cache.get(node_id) or f.load(node_id)
        keys = node.keys
        j = bisect_right(keys, key)
        if j:
            j -= 1
            out = []
        else:
            # The floor, if any, ends the previous leaf (rare: a separator
            # key was asked for, or the key is below the tree's first).
            prev = self.floor(key)
            out = [prev] if prev is not None and prev[0] < stop else []
        while True:
            if not keys or keys[-1] < stop:
                out.extend(zip(keys[j:], node.vals[j:]))
            else:
                end = bisect_left(keys, stop, j)
                out.extend(zip(keys[j:end], node.vals[j:end]))
                return out
            node = self._next_leaf(stack)
            if node is None:
                return out
            keys = node.keys
            j = 0

    def first(self):
        for item in self.items():
            return item
        return None

    def last(self):
        return self.floor_any()

    def floor_any(self):
        for item in self.items_reverse():
            return item
        return None
