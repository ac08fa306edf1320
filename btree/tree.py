"""Copy-on-write B+trees that share nodes, decided by operation sequence numbers.

A :class:`Forest` is a set of named trees in one node store. Trees share
nodes: a snapshot of a tree is a second tree record pointing at the same root.

The rule that makes sharing safe without reference counts (design notes, 1):
every change to a tree is one operation with a new sequence number ``seq``
from the forest's counter, and every node records the seq of the operation
that last wrote it. Each tree knows ``snap_seq``, the counter's value when the
newest snapshot (or clone) of it was taken. To change a node:

* ``node.seq > snap_seq``: the node was written after the newest snapshot, so
  only this tree can reach it. It is modified in place.
* otherwise it may be shared. It is never modified: it is copied to a new node
  id (shadowed), the copy is changed, and the parent is made to point at the
  copy - by the same rule, up to the root.

Every node on the path of a change is stamped with the operation's seq, so a
child's seq never exceeds its parent's. That invariant is what lets the rule
look at one node: a node newer than the snapshot has only newer ancestors.

Taking a snapshot is therefore O(1): record root and seq. Node ids are never
reused, so an id freed by a change cannot be handed out again before the
commit that frees it is durable (nor after).

Changes live in a write-back cache of decoded nodes until :meth:`Forest.commit`
writes every dirty node, deletes freed ones and updates the tree records and
counters in one atomic store transaction.

Trees and the forest are not thread-safe; callers serialise access.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from operator import lt
from typing import Iterable, Iterator

from vdisk.errors import AlreadyExists, CorruptNode, IntegrityError, InvalidArgument, NotFound, ReadOnly

from . import format as fmt
from .format import Layout, TreeRecord


class Node:
    """A decoded node. ``vals`` holds values (leaf) or child node ids (inner).

    A leaf keeps each u64 field in an array('Q') and each bytes field in a
    list; an inner node keeps lists. Code that changes a node keeps those
    types (slices and copies of a sequence have its type), because encoding
    relies on them (see :func:`leaf_fields`).

    ``packed_vals`` is None or, for a leaf with bytes values, those values
    joined: a bytearray kept in step with ``vals`` by the single-entry
    changes, so that a commit copies it instead of gathering every value
    object of the leaf again (most of a commit's cost when the values are
    scattered in memory). Every other change of ``vals`` sets it to None;
    a commit writes packed_vals, so code that changes ``vals`` without
    doing either would write stale values (tests/btree/test_in_place.py and
    the state machines check the two agree after every step).
    """

    __slots__ = ("id", "seq", "leaf", "keys", "vals", "layout", "packed_vals")

    def __init__(self, node_id: int, seq: int, leaf: bool, keys: list, vals: list, layout: Layout,
                 packed_vals: bytearray | None = None):
        self.id = node_id
        self.seq = seq
        self.leaf = leaf
        self.keys = keys
        self.vals = vals
        self.layout = layout
        self.packed_vals = packed_vals

    def __repr__(self):
        kind = "leaf" if self.leaf else "inner"
        return f"<{kind} {self.id} seq={self.seq} n={len(self.keys)}>"


def leaf_fields(layout: Layout):
    """The constructors of a leaf's key and value sequences for ``layout``."""
    return (fmt.u64_array if layout.key_type[0] == fmt.T_U64 else list,
            fmt.u64_array if layout.value_type[0] == fmt.T_U64 else list)


_SEQ_KEY = b"counter/seq"
_NODE_ID_KEY = b"counter/node"
_TREE_PREFIX = b"tree/"


def _tree_name(key: bytes) -> str:
    try:
        return key[len(_TREE_PREFIX):].decode()
    except UnicodeDecodeError:
        raise IntegrityError(f"tree record key {key[:80]!r} is not UTF-8: the store is damaged; "
                             f"run vdisk verify") from None


class Forest:
    """Named copy-on-write B+trees sharing one node store and one seq counter."""

    def __init__(self, store, cache_nodes: int = 250_000):
        self.store = store
        self.cache_limit = cache_nodes
        self._cache: dict[int, Node] = {}
        self._dirty: set[int] = set()
        self._freed: set[int] = set()
        self._meta: dict[bytes, bytes | None] = {}
        self._trees: dict[str, BTree] = {}
        self._dirty_trees: set[str] = set()
        self._load_counters()

    # ----------------------------------------------------------- counters

    def _load_counters(self):
        header = self.store.meta_get(b"format")
        if header is None:
            if self.store.readonly:
                raise IntegrityError("metadata store is empty: not a vdisk B+tree store")
            # Only a store with nothing in it may be started afresh: counters
            # begun again over old nodes would reuse their ids and seqs.
            if self.store.last_node_id() is not None or self.store.meta_items(b""):
                raise IntegrityError("metadata store header is missing from a store that holds data: "
                                     "the store is damaged; run vdisk verify")
            self._meta[b"format"] = fmt.encode_store_header()
            self.seq = 0
            self._next_id = 1
        else:
            fmt.check_store_header(header)
            seq = self.store.meta_get(_SEQ_KEY)
            nid = self.store.meta_get(_NODE_ID_KEY)
            if seq is None or nid is None:
                raise IntegrityError("metadata store counters are missing")
            self.seq = fmt.decode_u64(seq)
            self._next_id = fmt.decode_u64(nid)
        self._committed_seq = self.seq

    def check_counters(self):
        """Raise IntegrityError if a counter is behind what the store holds.

        A writer must not start from such counters (readers and the checker
        may: they report it): a node counter at or below a stored node would
        hand out live ids, and a seq counter behind a tree would make the
        seq rule judge nodes a snapshot shares as the writer's own and change
        them in place. Costs one cursor step, and one record and one root
        node per tree; the loaded roots stay cached.
        """
        last = self.store.last_node_id()
        if last is not None and self._next_id <= last:
            raise IntegrityError(f"metadata node counter {self._next_id} is not past the highest stored "
                                 f"node {last}: the store is damaged; run vdisk verify")
        for key, buf in self.store.meta_items(_TREE_PREFIX):
            name = _tree_name(key)
            rec = fmt.decode_tree_record(name, buf)
            newest = max(rec.snap_seq, rec.created_seq, self._load(rec.root).seq if rec.root else 0)
            if newest > self.seq:
                raise IntegrityError(f"metadata seq counter {self.seq} is behind tree {name!r} (seq {newest}): "
                                     f"the store is damaged; run vdisk verify")

    @property
    def next_node_id(self) -> int:
        return self._next_id

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # ----------------------------------------------------------- nodes

    def node(self, node_id: int) -> Node:
        n = self._cache.get(node_id)
        if n is None:
            n = self._load(node_id)
        return n

    def _load(self, node_id: int) -> Node:
        if node_id in self._freed:
            raise CorruptNode(node_id, "referenced after it was freed")
        d = fmt.decode_node(node_id, self.store.load(node_id))
        n = Node(node_id, d.seq, d.leaf, d.keys, d.vals, d.layout)
        if len(self._cache) >= self.cache_limit:
            self._evict()
        self._cache[node_id] = n
        return n

    def _evict(self):
        # Oldest-loaded clean nodes go first (dicts keep insertion order);
        # dirty nodes stay until commit writes them.
        target = self.cache_limit * 3 // 4
        drop = []
        excess = len(self._cache) - target
        for node_id in self._cache:
            if excess <= 0:
                break
            if node_id not in self._dirty:
                drop.append(node_id)
                excess -= 1
        for node_id in drop:
            del self._cache[node_id]

    def _new_node(self, seq: int, leaf: bool, keys: list, vals: list, layout: Layout,
                  packed_vals: bytearray | None = None) -> Node:
        n = Node(self._next_id, seq, leaf, keys, vals, layout, packed_vals)
        self._next_id += 1
        self._cache[n.id] = n
        self._dirty.add(n.id)
        return n

    def _writable(self, node: Node, seq: int, snap_seq: int) -> Node:
        """The seq rule: modify in place if newer than the snapshot, else shadow."""
        if node.seq > snap_seq:
            node.seq = seq
            self._dirty.add(node.id)
            # The cache may have evicted it while it sat clean on the path.
            self._cache[node.id] = node
            return node
        packed = node.packed_vals
        return self._new_node(seq, node.leaf, node.keys[:], node.vals[:], node.layout,
                              None if packed is None else bytearray(packed))

    def _free(self, node: Node, snap_seq: int):
        """Forget a node this tree no longer references; reclaim it if exclusive."""
        if node.seq > snap_seq:
            self._freed.add(node.id)
            self._dirty.discard(node.id)
            self._cache.pop(node.id, None)

    def free_node_ids(self, node_ids: Iterable[int]):
        """Reclaim nodes at the next commit (used by snapshot deletion)."""
        for node_id in node_ids:
            self._freed.add(node_id)
            self._dirty.discard(node_id)
            self._cache.pop(node_id, None)

    # ----------------------------------------------------------- trees

    def _record_key(self, name: str) -> bytes:
        return _TREE_PREFIX + name.encode()

    def tree_names(self) -> list[str]:
        names = {_tree_name(k) for k, _ in self.store.meta_items(_TREE_PREFIX)}
        for k, v in self._meta.items():
            if k.startswith(_TREE_PREFIX):
                name = _tree_name(k)
                if v is None:
                    names.discard(name)
                else:
                    names.add(name)
        names.update(self._trees)
        return sorted(names)

    def has_tree(self, name: str) -> bool:
        if name in self._trees:
            return True
        key = self._record_key(name)
        if key in self._meta:
            return self._meta[key] is not None
        return self.store.meta_get(key) is not None

    def tree(self, name: str) -> "BTree":
        t = self._trees.get(name)
        if t is not None:
            return t
        key = self._record_key(name)
        buf = self._meta[key] if key in self._meta else self.store.meta_get(key)
        if buf is None:
            raise NotFound(f"no tree named {name!r}")
        t = BTree(self, name, fmt.decode_tree_record(name, buf))
        self._trees[name] = t
        return t

    def create_tree(self, name: str, layout: Layout = Layout()) -> "BTree":
        self._check_name(name)
        if self.has_tree(name):
            raise AlreadyExists(f"tree {name!r} already exists")
        seq = self.next_seq()
        new_keys, new_vals = leaf_fields(layout)
        root = self._new_node(seq, True, new_keys(), new_vals(), layout)
        rec = TreeRecord(root=root.id, height=1, snap_seq=0, count=0, created_seq=seq, layout=layout)
        t = BTree(self, name, rec)
        self._trees[name] = t
        self._dirty_trees.add(name)
        return t

    def snapshot(self, name: str, snap_name: str) -> "BTree":
        """Freeze the current contents of tree ``name`` as tree ``snap_name``. O(1)."""
        self._check_name(snap_name)
        src = self.tree(name)
        if self.has_tree(snap_name):
            raise AlreadyExists(f"tree {snap_name!r} already exists")
        r = src.rec
        src.rec.snap_seq = self.seq
        rec = TreeRecord(root=r.root, height=r.height, snap_seq=self.seq, count=r.count,
                         created_seq=self.seq, layout=r.layout, frozen=True)
        snap = BTree(self, snap_name, rec)
        self._trees[snap_name] = snap
        self._dirty_trees.update((name, snap_name))
        return snap

    def clone(self, src_name: str, dst_name: str, replace: bool = False) -> "BTree":
        """Make ``dst_name`` a writable tree sharing every node of snapshot ``src_name``. O(1).

        With ``replace`` an existing ``dst_name`` is overwritten; its exclusive
        nodes are not reclaimed here (see :meth:`exclusive_nodes`).
        """
        self._check_name(dst_name)
        src = self.tree(src_name)
        if not src.rec.frozen:
            # Two writable trees sharing nodes would each shadow the shared
            # ones and orphan them: nothing could tell when the last let go.
            raise InvalidArgument(f"clone needs a snapshot; {src_name!r} is writable (snapshot it first)")
        if self.has_tree(dst_name) and not replace:
            raise AlreadyExists(f"tree {dst_name!r} already exists")
        r = src.rec
        rec = TreeRecord(root=r.root, height=r.height, snap_seq=self.seq, count=r.count,
                         created_seq=self.seq, layout=r.layout)
        t = BTree(self, dst_name, rec)
        self._trees[dst_name] = t
        self._dirty_trees.add(dst_name)
        return t

    def rename_tree(self, name: str, new_name: str):
        """Give tree ``name`` the name ``new_name``; nodes and seqs are untouched. O(1)."""
        self._check_name(new_name)
        src = self.tree(name)
        if self.has_tree(new_name):
            raise AlreadyExists(f"tree {new_name!r} already exists")
        moved = BTree(self, new_name, dataclasses.replace(src.rec))
        self.drop_tree(name)
        self._trees[new_name] = moved
        self._dirty_trees.add(new_name)
        return moved

    def drop_tree(self, name: str):
        """Forget a tree record. Its nodes are not reclaimed here."""
        if not self.has_tree(name):
            raise NotFound(f"no tree named {name!r}")
        self._trees.pop(name, None)
        self._dirty_trees.discard(name)
        self._meta[self._record_key(name)] = None

    @staticmethod
    def _check_name(name: str):
        if not name or len(name.encode()) > 200 or "\0" in name:
            raise InvalidArgument(f"bad tree name {name!r}")

    # ----------------------------------------------------------- meta

    def meta_get(self, key: bytes) -> bytes | None:
        if key in self._meta:
            return self._meta[key]
        return self.store.meta_get(key)

    def meta_put(self, key: bytes, value: bytes | None):
        """Stage a metadata record (``None`` deletes) for the next commit."""
        if key.startswith(_TREE_PREFIX) or key in (b"format", _SEQ_KEY, _NODE_ID_KEY):
            raise InvalidArgument(f"meta key {key!r} is reserved for the B+tree")
        self._meta[key] = value

    def meta_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        items = dict(self.store.meta_items(prefix))
        for k, v in self._meta.items():
            if k.startswith(prefix):
                if v is None:
                    items.pop(k, None)
                else:
                    items[k] = v
        return sorted(items.items())

    # ----------------------------------------------------------- commit

    @property
    def dirty_nodes(self) -> int:
        """Nodes changed since the last commit (what the next commit writes)."""
        return len(self._dirty)

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty or self._freed or self._meta or self._dirty_trees
                    or self.seq != self._committed_seq)

    def commit(self):
        """Write every change since the last commit in one atomic transaction."""
        if self.store.readonly:
            raise ReadOnly("metadata is open read-only")
        if not self.has_changes:
            return
        puts = {}
        cache = self._cache
        for node_id in self._dirty:
            n = cache[node_id]
            packed = None
            if n.leaf:
                vt, vw = n.layout.value_type
                if vt == fmt.T_BYTES:
                    packed = n.packed_vals
                    # (Checking the values themselves would cost as much as
                    # joining them: their objects are all over memory.)
                    if packed is None or len(packed) != len(n.vals) * vw:
                        packed = n.packed_vals = bytearray(b"".join(n.vals))
            puts[node_id] = fmt.encode_node(node_id, n.seq, n.leaf, n.layout, n.keys, n.vals,
                                            packed_vals=packed)
        meta = dict(self._meta)
        for name in self._dirty_trees:
            meta[self._record_key(name)] = fmt.encode_tree_record(self._trees[name].rec)
        meta[_SEQ_KEY] = fmt.encode_u64(self.seq)
        meta[_NODE_ID_KEY] = fmt.encode_u64(self._next_id)
        self.store.commit(puts, sorted(self._freed), meta)
        self._dirty.clear()
        self._freed.clear()
        self._meta.clear()
        self._dirty_trees.clear()
        self._committed_seq = self.seq

    def rollback(self):
        """Discard every uncommitted change; open trees reload their records.

        A handle whose tree was not committed is detached: using it raises.
        """
        self._cache.clear()
        self._dirty.clear()
        self._freed.clear()
        self._meta.clear()
        self._dirty_trees.clear()
        self._load_counters()
        for name, t in list(self._trees.items()):
            buf = self.store.meta_get(self._record_key(name))
            if buf is None:
                del self._trees[name]
                t.__class__ = _DetachedTree
            else:
                t.rec = fmt.decode_tree_record(name, buf)

    def refresh(self):
        """Forget cached state so later reads see the store's newest commit.

        For read-only forests beside a writer in another process: nodes the
        writer modifies in place would otherwise be served stale.
        """
        if self.has_changes and not self.store.readonly:
            raise InvalidArgument("refresh would discard uncommitted changes")
        self.rollback()


class BTree:
    """One tree of a :class:`Forest`. Get a handle from the forest, not here."""

    def __init__(self, forest: Forest, name: str, rec: TreeRecord):
        self.forest = forest
        self.name = name
        self.rec = rec
        self.layout = rec.layout
        self.leaf_cap = rec.layout.leaf_capacity
        self.inner_cap = rec.layout.inner_capacity
        # A node below a quarter full is merged or refilled from a sibling.
        self.leaf_min = max(1, self.leaf_cap // 4)
        self.inner_min = max(2, self.inner_cap // 4)
        self._new_keys, self._new_vals = leaf_fields(rec.layout)
        # Widths of bytes fields (0 for u64): checked on the way in, because
        # a wrong-width entry would shift every entry after it on disk.
        kt, kw = rec.layout.key_type
        vt, vw = rec.layout.value_type
        self._key_bytes = kw if kt == fmt.T_BYTES else 0
        self._val_bytes = vw if vt == fmt.T_BYTES else 0

    # ----------------------------------------------------------- properties

    @property
    def root(self) -> int:
        return self.rec.root

    @property
    def height(self) -> int:
        return self.rec.height

    @property
    def snap_seq(self) -> int:
        return self.rec.snap_seq

    @property
    def frozen(self) -> bool:
        return self.rec.frozen

    def __len__(self) -> int:
        return self.rec.count

    def __repr__(self):
        return f"<BTree {self.name!r} root={self.rec.root} height={self.rec.height} n={self.rec.count}>"

    def release_snapshot_seq(self, seq: int):
        """Lower ``snap_seq`` after the snapshot that shared nodes is gone.

        The caller guarantees that no other tree reaches a node of this tree
        whose seq is above ``seq``; such nodes then change in place again
        instead of being shadowed (and leaked) on the next write.
        """
        if seq < self.rec.snap_seq:
            self.rec.snap_seq = seq
            self._touch()

    # ----------------------------------------------------------- reads

    def get(self, key, default=None):
        cache = self.forest._cache
        load = self.forest._load
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
        cache = f._cache
        path = []
        node_id = self.rec.root
        node = cache.get(node_id) or f._load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            node_id = node.vals[i]
            node = cache.get(node_id) or f._load(node_id)
        return path, node

    def items(self, start=None, stop=None) -> Iterator[tuple]:
        """Entries with ``start <= key < stop`` in key order (bounds optional).

        The tree must not be changed while the iterator is in use; iterate a
        snapshot (whose nodes never change) to read beside writes.
        """
        f = self.forest
        cache = f._cache
        stack = []
        node_id = self.rec.root
        node = cache.get(node_id) or f._load(node_id)
        while not node.leaf:
            i = 0 if start is None else bisect_right(node.keys, start) - 1
            if i < 0:
                i = 0
            stack.append([node, i])
            node_id = node.vals[i]
            node = cache.get(node_id) or f._load(node_id)
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
        # items_reverse without the generator: the extent maps call this on
        # every disk request.
        f = self.forest
        cache = f._cache
        stack = []
        node_id = self.rec.root
        node = cache.get(node_id) or f._load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            stack.append([node, i])
            node_id = node.vals[i]
            node = cache.get(node_id) or f._load(node_id)
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
        cache = f._cache
        stack = []
        node_id = self.rec.root
        node = cache.get(node_id) or f._load(node_id)
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            stack.append([node, i])
            node_id = node.vals[i]
            node = cache.get(node_id) or f._load(node_id)
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

    # ----------------------------------------------------------- writes

    def _check_writable(self):
        if self.rec.frozen:
            raise ReadOnly(f"tree {self.name!r} is a snapshot and cannot change")
        if self.forest.store.readonly:
            raise ReadOnly("metadata is open read-only")

    def _touch(self):
        self.forest._dirty_trees.add(self.name)

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

    def _make_path_writable(self, path: list, leaf: Node, seq: int) -> tuple[list, Node]:
        """Apply the seq rule to the leaf and every ancestor, bottom up."""
        f = self.forest
        snap = self.rec.snap_seq
        if leaf.seq > snap:
            for node, _i in path:
                if node.seq <= snap:
                    break
            else:
                # Every node is exclusive: no copies, no parent pointers to fix.
                self._stamp(path, leaf, seq)
                return path, leaf
        leaf = child = f._writable(leaf, seq, snap)
        new_path = [None] * len(path)
        for depth in range(len(path) - 1, -1, -1):
            parent, i = path[depth]
            wp = f._writable(parent, seq, snap)
            wp.vals[i] = child.id
            new_path[depth] = (wp, i)
            child = wp
        self.rec.root = child.id
        self._touch()
        return new_path, leaf

    def _stamp(self, path: list, leaf: Node, seq: int):
        """Mark an exclusive path written by operation ``seq``.

        The whole path gets the seq, so no child is ever newer than its parent.
        """
        f = self.forest
        cache, dirty = f._cache, f._dirty
        leaf.seq = seq
        dirty.add(leaf.id)
        # Loading a node lower on the path may have evicted a clean one.
        cache[leaf.id] = leaf
        for node, _i in path:
            node.seq = seq
            dirty.add(node.id)
            cache[node.id] = node
        f._dirty_trees.add(self.name)

    def insert(self, key, value):
        """Insert or update one entry."""
        # The hot path of every writer: descent, checks and the in-place
        # change are inlined (each method call would cost about as much as
        # the bisect it wraps).
        rec = self.rec
        f = self.forest
        if rec.frozen or f.store.readonly:
            self._check_writable()
        if self._key_bytes:
            key, value = self._check_entry(key, value)
        elif self._val_bytes and (type(value) is not bytes or len(value) != self._val_bytes):
            value = self._bytes_field(value, self._val_bytes, "value")
        cache = f._cache
        node_id = rec.root
        node = cache.get(node_id) or f._load(node_id)
        path = []
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            node_id = node.vals[i]
            node = cache.get(node_id) or f._load(node_id)
        keys = node.keys
        j = bisect_left(keys, key)
        exists = j < len(keys) and keys[j] == key
        if exists and node.vals[j] == value:
            return
        f.seq = seq = f.seq + 1
        snap = rec.snap_seq
        if node.seq > snap and (exists or len(keys) < self.leaf_cap):
            for p, _i in path:
                if p.seq <= snap:
                    break
            else:
                # The common case: an exclusive leaf that does not split
                # changes in place; the seq stamps go up the path (no child
                # is newer than its parent) and no node is copied.
                self._put_entry(node, j, key, value, exists)
                # A node written since the last commit is dirty already, and
                # dirty nodes are never evicted; a clean one is made dirty
                # and put back in the cache (loading a lower node may have
                # evicted it).
                committed = f._committed_seq
                if node.seq <= committed:
                    f._dirty.add(node_id)
                    cache[node_id] = node
                node.seq = seq
                for p, _i in path:
                    if p.seq <= committed:
                        f._dirty.add(p.id)
                        cache[p.id] = p
                    p.seq = seq
                return
        path, node = self._make_path_writable(path, node, seq)
        self._put_entry(node, j, key, value, exists)
        if len(node.keys) > self.leaf_cap:
            self._split_up(path, node, seq)

    def _put_entry(self, leaf: Node, j: int, key, value, exists: bool):
        """Store one entry at index j; a bad u64 leaves the leaf unchanged."""
        packed = leaf.packed_vals
        try:
            if exists:
                leaf.vals[j] = value
                if packed is not None:
                    w = self._val_bytes
                    packed[j * w:j * w + w] = value
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
        if packed is not None:
            w = self._val_bytes
            packed[j * w:j * w] = value
        self.rec.count += 1
        self.forest._dirty_trees.add(self.name)

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
        pos = 0
        n = len(keys)
        while pos < n:
            path, leaf = self._descend(keys[pos])
            hi = None
            for node, i in path:
                if i + 1 < len(node.keys):
                    bound = node.keys[i + 1]
                    if hi is None or bound < hi:
                        hi = bound
            end = n if hi is None else bisect_left(keys, hi, pos)
            path, leaf = self._make_path_writable(path, leaf, seq)
            run_k, run_v = keys[pos:end], vals[pos:end]
            leaf.packed_vals = None
            if not leaf.keys or run_k[0] > leaf.keys[-1]:
                leaf.keys.extend(run_k)
                leaf.vals.extend(run_v)
                self.rec.count += len(run_k)
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

    def _split_parts(self, node: Node, cap: int, seq: int) -> list[Node]:
        """Split an overfull writable node into as few balanced nodes as fit."""
        n = len(node.keys)
        parts = -(-n // cap)
        f = self.forest
        bounds = [n * p // parts for p in range(parts + 1)]
        out = [node]
        for p in range(1, parts):
            a, b = bounds[p], bounds[p + 1]
            out.append(f._new_node(seq, node.leaf, node.keys[a:b], node.vals[a:b], self.layout))
        del node.keys[bounds[1]:]
        del node.vals[bounds[1]:]
        node.packed_vals = None
        return out

    def _split_up(self, path: list, node: Node, seq: int):
        f = self.forest
        while True:
            cap = self.leaf_cap if node.leaf else self.inner_cap
            if len(node.keys) <= cap:
                return
            parts = self._split_parts(node, cap, seq)
            if not path:
                root = f._new_node(seq, False, [p.keys[0] for p in parts], [p.id for p in parts],
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
        path, leaf = self._make_path_writable(path, leaf, seq)
        del leaf.keys[j]
        del leaf.vals[j]
        if leaf.packed_vals is not None:
            w = self._val_bytes
            del leaf.packed_vals[j * w:j * w + w]
        self.rec.count -= 1
        self._rebalance(path, leaf, seq)
        return True

    def _rebalance(self, path: list, node: Node, seq: int):
        f = self.forest
        snap = self.rec.snap_seq
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
                    left = f._writable(sib, seq, snap)
                    right = node
                else:
                    left, right = node, sib
                left.keys.extend(right.keys)
                left.vals.extend(right.vals)
                left.packed_vals = None
                parent.vals[li] = left.id
                del parent.keys[li + 1]
                del parent.vals[li + 1]
                f._free(right, snap)
            else:
                sib = f._writable(sib, seq, snap)
                parent.vals[s] = sib.id
                left, right = (sib, node) if s < i else (node, sib)
                keys = left.keys + right.keys
                vals = left.vals + right.vals
                half = len(keys) // 2
                left.keys, left.vals = keys[:half], vals[:half]
                right.keys, right.vals = keys[half:], vals[half:]
                left.packed_vals = right.packed_vals = None
                parent.keys[li + 1] = right.keys[0]
                return
            node = parent
        # At the root: an inner root with one child hands the root down.
        while not node.leaf and len(node.vals) == 1 and node.id == self.rec.root:
            child = f.node(node.vals[0])
            self.rec.root = child.id
            self.rec.height -= 1
            f._free(node, snap)
            node = child


_MISSING = object()


class _DetachedTree(BTree):
    """A handle to a tree that :meth:`Forest.rollback` discarded.

    Every use fails with NotFound naming the tree, instead of reading
    whatever its stale record points at.
    """

    def __getattribute__(self, attr):
        if attr in ("name", "__class__", "__dict__") or attr.startswith("__"):
            return object.__getattribute__(self, attr)
        name = object.__getattribute__(self, "name")
        raise NotFound(f"tree {name!r} was discarded by a rollback (never committed); open it again")
