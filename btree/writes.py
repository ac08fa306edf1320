"""Changing a tree: insert, bulk insert, delete, and the splits and merges they need.

Methods of :class:`~vdisk.btree.tree.BTree`. Every node a change writes is
first made writable by the seq rule (``_make_path_writable`` in
:mod:`.tree`, the one place it is decided whether a node changes in place
or is shadowed); nodes a change drops go through ``_free``, beside it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import lt
from typing import Iterable

from vdisk.errors import InvalidArgument, ReadOnly

from . import format as fmt
from .format import Layout
from .node import Node, leaf_fields


# insert_sorted places runs of at most this many entries in a leaf one by one.
SHORT_RUN = 8


class TreeWrites:
    """The write half of :class:`~vdisk.btree.tree.BTree` (a mixin: ``forest``, ``rec``
    and the capacities are the tree's)."""

    def __init__(self, layout: Layout):
        self._new_keys, self._new_vals = leaf_fields(layout)
        # Widths of bytes fields (0 for u64): checked on the way in, because
        # a wrong-width entry would shift every entry after it on disk.
        kt, kw = layout.key_type
        vt, vw = layout.value_type
        self._key_bytes = kw if kt == fmt.T_BYTES else 0
        self._val_bytes = vw if vt == fmt.T_BYTES else 0

    def _check_writable(self):
        if self.rec.frozen:
            raise ReadOnly(f"tree {self.name!r} is a snapshot and cannot change")
        if self.forest.store.readonly and not self.forest.scratch:
            raise ReadOnly("metadata is open read-only")

    @staticmethod
    def _bytes_field(x, width: int, what: str) -> bytes:
        if not isinstance(x, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"B+tree {what} must be {width} bytes, got {type(x).__name__}")
        x = bytes(x)  # a caller's bytearray must not change a leaf later
        if len(x) != width:
            raise InvalidArgument(f"B+tree {what} must be {width} bytes, got {len(x)}")
        return x

    def _check_entry(self, key, value):
        """Validate a bytes key or value the arrays do not check themselves."""
        if self._key_bytes and (type(key) is not bytes or len(key) != self._key_bytes):
            key = self._bytes_field(key, self._key_bytes, "key")
        if self._val_bytes and (type(value) is not bytes or len(value) != self._val_bytes):
            value = self._bytes_field(value, self._val_bytes, "value")
        return key, value

    def insert(self, key, value):
        """Insert or update one entry."""
        # The hot path of every writer: descent, checks and the change are
        # inlined (each method call would cost about as much as the bisect
        # it wraps).
        rec = self.rec
        f = self.forest
        if rec.frozen or f.store.readonly:
            self._check_writable()
        if self._key_bytes:
            key, value = self._check_entry(key, value)
        elif self._val_bytes and (type(value) is not bytes or len(value) != self._val_bytes):
            value = self._bytes_field(value, self._val_bytes, "value")
        cache = f.cache
        node_id = rec.root
        node = cache.get(node_id) or f.load(node_id)
        path = []
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            node_id = node.vals[i]
            node = cache.get(node_id) or f.load(node_id)
        keys = node.keys
        j = bisect_left(keys, key)
        exists = j < len(keys) and keys[j] == key
        if exists and node.vals[j] == value:
            return
        f.seq = seq = f.seq + 1
        leaf = self._make_path_writable(path, node, seq)
        # A bad u64 leaves the leaf as it was.
        try:
            if exists:
                leaf.vals[j] = value
                return
            leaf.keys.insert(j, key)
            try:
                leaf.vals.insert(j, value)
            except BaseException:
                del leaf.keys[j]
                raise
        except (TypeError, OverflowError):
            raise InvalidArgument(f"bad B+tree entry {key!r} -> {value!r}: {self.layout.key} keys and "
                                  f"{self.layout.value} values expected") from None
        rec.count += 1
        f.dirty_trees.add(self.name)
        if len(leaf.keys) > self.leaf_cap:
            self._split_up(path, leaf, seq)

    def insert_sorted(self, items: Iterable[tuple]):
        """Insert or update many entries given in strictly ascending key order.

        One operation (one seq) for the whole run; each leaf it touches is
        merged and split once rather than once per entry.
        """
        self._check_writable()
        items = list(items)
        if not items:
            return
        keys = [k for k, _ in items]
        vals = [v for _, v in items]
        # Convert and check every entry before the first change.
        # (map over C functions: these run on every entry of every write.)
        kb, vb = self._key_bytes, self._val_bytes
        try:
            if not kb:
                keys = self._new_keys(keys)
            elif set(map(type, keys)) != {bytes} or set(map(len, keys)) != {kb}:
                keys = [self._bytes_field(k, kb, "key") for k in keys]
            if not vb:
                vals = self._new_vals(vals)
            elif set(map(type, vals)) != {bytes} or set(map(len, vals)) != {vb}:
                vals = [self._bytes_field(v, vb, "value") for v in vals]
        except (TypeError, OverflowError):
            raise InvalidArgument(f"bad B+tree entry: {self.layout.key} keys and "
                                  f"{self.layout.value} values expected") from None
        if not all(map(lt, keys, keys[1:])):
            raise InvalidArgument("insert_sorted needs strictly ascending keys")
        seq = self.forest.next_seq()
        self._touch()
        pos = 0
        n = len(keys)
        while pos < n:
            path, leaf = self._descend(keys[pos])
            end = _run_end(path, keys, pos)
            leaf = self._make_path_writable(path, leaf, seq)
            run_k, run_v = keys[pos:end], vals[pos:end]
            if not leaf.keys or run_k[0] > leaf.keys[-1]:
                leaf.keys.extend(run_k)
                leaf.vals.extend(run_v)
                self.rec.count += len(run_k)
            elif len(run_k) <= SHORT_RUN:
                # A few entries into a full leaf (a small commit's checksums):
                # placed one by one, not a rebuild of the whole leaf.
                lk, lv = leaf.keys, leaf.vals
                for k, v in zip(run_k, run_v):
                    j = bisect_left(lk, k)
                    if j < len(lk) and lk[j] == k:
                        lv[j] = v
                    else:
                        lk.insert(j, k)
                        lv.insert(j, v)
                        self.rec.count += 1
            else:
                merged = dict(zip(leaf.keys, leaf.vals))
                before = len(merged)
                merged.update(zip(run_k, run_v))
                self.rec.count += len(merged) - before
                order = sorted(merged)
                leaf.keys = self._new_keys(order)
                leaf.vals = self._new_vals([merged[k] for k in order])
            if len(leaf.keys) > self.leaf_cap:
                self._split_up(path, leaf, seq)
            pos = end

    def _split_parts(self, node: Node, cap: int, seq: int, rightmost: bool = False) -> list[Node]:
        """Split an overfull writable node into as few nodes as fit.

        Balanced, except for the rightmost node of its level: a tree whose
        keys are born in ascending order (the VBA and csum maps) only grows
        there, and halves left every leaf behind it half full (the checksum
        map of a 4 GiB disk: 57%, 12,304 leaves, most of what verify reads).
        So that node keeps full parts on the left and leaves the right one,
        which takes the next appends, only the minimum.
        """
        n = len(node.keys)
        parts = -(-n // cap)
        f = self.forest
        if rightmost:
            minimum = self.leaf_min if node.leaf else self.inner_min
            bounds = [min(n, cap * p) for p in range(parts)] + [n]
            if n - bounds[-2] < minimum:
                bounds[-2] = n - minimum
        else:
            bounds = [n * p // parts for p in range(parts + 1)]
        out = [node]
        for p in range(1, parts):
            a, b = bounds[p], bounds[p + 1]
            out.append(f.new_node(seq, node.leaf, node.keys[a:b], node.vals[a:b], self.layout))
        del node.keys[bounds[1]:]
        del node.vals[bounds[1]:]
        return out

    def _split_up(self, path: list, node: Node, seq: int):
        f = self.forest
        while True:
            cap = self.leaf_cap if node.leaf else self.inner_cap
            if len(node.keys) <= cap:
                return
            rightmost = all(i == len(parent.vals) - 1 for parent, i in path)
            parts = self._split_parts(node, cap, seq, rightmost)
            if not path:
                root = f.new_node(seq, False, [p.keys[0] for p in parts], [p.id for p in parts],
                                  self.layout)
                self.rec.root = root.id
                self.rec.height += 1
                node = root  # a bulk insert can overfill the new root too
                continue
            parent, i = path.pop()
            parent.keys[i + 1:i + 1] = [p.keys[0] for p in parts[1:]]
            parent.vals[i + 1:i + 1] = [p.id for p in parts[1:]]
            node = parent

    def delete(self, key) -> bool:
        """Remove one entry; returns whether it was there."""
        self._check_writable()
        path, leaf = self._descend(key)
        j = bisect_left(leaf.keys, key)
        if j >= len(leaf.keys) or leaf.keys[j] != key:
            return False
        seq = self.forest.next_seq()
        self._touch()
        leaf = self._make_path_writable(path, leaf, seq)
        del leaf.keys[j]
        del leaf.vals[j]
        self.rec.count -= 1
        self._rebalance(path, leaf, seq)
        return True

    def delete_sorted(self, keys: Iterable) -> int:
        """Remove many keys given in strictly ascending order; returns how many were there.

        Absent keys are skipped. One operation (one seq, taken at the first
        key present) for the whole run; each leaf it touches is descended to,
        changed and rebalanced once rather than once per key.
        """
        self._check_writable()
        keys = list(keys)
        if not keys:
            return 0
        try:
            ascending = all(map(lt, keys, keys[1:]))
        except TypeError:
            raise InvalidArgument(f"bad B+tree key: {self.layout.key} keys expected") from None
        if not ascending:
            raise InvalidArgument("delete_sorted needs strictly ascending keys")
        seq = None
        removed = 0
        pos = 0
        n = len(keys)
        while pos < n:
            path, leaf = self._descend(keys[pos])
            try:
                end = _run_end(path, keys, pos)
                # Positions of the run's keys in the leaf, as [start, stop) slices.
                lk = leaf.keys
                nk = len(lk)
                spans = []
                j = 0
                for x in range(pos, end):
                    j = bisect_left(lk, keys[x], j)
                    if j >= nk:
                        break
                    if lk[j] == keys[x]:
                        if spans and spans[-1][1] == j:
                            spans[-1][1] = j + 1
                        else:
                            spans.append([j, j + 1])
                        j += 1
            except TypeError:
                raise InvalidArgument(f"bad B+tree key: {self.layout.key} keys expected") from None
            pos = end
            if not spans:
                continue
            if seq is None:
                seq = self.forest.next_seq()
                self._touch()
            leaf = self._make_path_writable(path, leaf, seq)
            gone = 0
            for a, b in reversed(spans):
                del leaf.keys[a:b]
                del leaf.vals[a:b]
                gone += b - a
            removed += gone
            self.rec.count -= gone
            self._rebalance(path, leaf, seq)
        return removed

    def _rebalance(self, path: list, node: Node, seq: int):
        f = self.forest
        while path:
            minimum = self.leaf_min if node.leaf else self.inner_min
            if len(node.keys) >= minimum:
                return
            parent, i = path.pop()
            s = i - 1 if i > 0 else i + 1
            if s >= len(parent.vals):
                return  # a lone child: the root collapse below handles it
            sib = f.node(parent.vals[s])
            li = min(i, s)
            cap = self.leaf_cap if node.leaf else self.inner_cap
            if len(node.keys) + len(sib.keys) <= cap:
                # Merge the right node into the left one; only the left is written.
                if s < i:
                    left = self._make_path_writable(path + [(parent, s)], sib, seq)
                    right = node
                else:
                    left, right = node, sib
                left.keys.extend(right.keys)
                left.vals.extend(right.vals)
                del parent.keys[li + 1]
                del parent.vals[li + 1]
                self._free(right)
            else:
                sib = self._make_path_writable(path + [(parent, s)], sib, seq)
                left, right = (sib, node) if s < i else (node, sib)
                keys = left.keys + right.keys
                vals = left.vals + right.vals
                half = len(keys) // 2
                left.keys, left.vals = keys[:half], vals[:half]
                right.keys, right.vals = keys[half:], vals[half:]
                parent.keys[li + 1] = right.keys[0]
                return
            node = parent
        # At the root: an inner root with one child hands the root down.
        while not node.leaf and len(node.vals) == 1 and node.id == self.rec.root:
            child = f.node(node.vals[0])
            self.rec.root = child.id
            self.rec.height -= 1
            self._free(node)
            node = child


def _run_end(path: list, keys, pos: int) -> int:
    """Where the run of ``keys`` from ``pos`` that belongs to the leaf at the
    end of ``path`` stops: at the first key the leaf's parents send elsewhere."""
    hi = None
    for node, i in path:
        if i + 1 < len(node.keys):
            bound = node.keys[i + 1]
            if hi is None or bound < hi:
                hi = bound
    return len(keys) if hi is None else bisect_left(keys, hi, pos)
