"""The forest: named trees in one node store, and everything they share.

:class:`Forest` owns the write-back cache of decoded nodes, the sets of
nodes changed and freed since the last commit, the seq and node-id
counters, the tree records and the staged metadata records, and writes
them all in one atomic store transaction (:meth:`Forest.commit`). What a
tree does with its nodes - reading, the seq rule, writing - is in
:mod:`.tree`, :mod:`.reads` and :mod:`.writes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Iterable

from vdisk.errors import AlreadyExists, CorruptNode, IntegrityError, InvalidArgument, NotFound, ReadOnly

from . import format as fmt
from .format import Layout, TreeRecord
from .node import Node, leaf_fields
from .tree import BTree, DetachedTree


_SEQ_KEY = b"counter/seq"
_NODE_ID_KEY = b"counter/node"
_TREE_PREFIX = b"tree/"


def _tree_name(key: bytes) -> str:
    try:
        return key[len(_TREE_PREFIX):].decode()
    except UnicodeDecodeError:
        raise IntegrityError(f"tree record key {key[:80]!r} is not UTF-8: the store is damaged; "
                             f"run vdisk verify") from None


class _Encoded(Mapping):
    """A commit's dirty nodes, id -> encoded bytes, encoded as the store asks.

    A store that writes them one at a time (LMDB) then holds one encoded node
    at a time instead of the whole commit's: on a 4 GiB disk a commit of every
    leaf was ~45 MiB of bytes beside the decoded nodes and LMDB's own copies
    of the pages, at the serving process's peak. A store may ask twice (a
    retry): the node is encoded again.
    """

    def __init__(self, cache: dict[int, Node], ids: list[int]):
        self._cache, self._ids, self._set = cache, ids, frozenset(ids)

    def __len__(self):
        return len(self._ids)

    def __iter__(self):
        return iter(self._ids)

    def __contains__(self, node_id):
        return node_id in self._set

    def __getitem__(self, node_id):
        if node_id not in self._set:
            raise KeyError(node_id)
        n = self._cache[node_id]
        return fmt.encode_node(node_id, n.seq, n.leaf, n.layout, n.keys, n.vals)


class Forest:
    """Named copy-on-write B+trees sharing one node store and one seq counter.

    Public to the tree code, which reads them on every operation (a method
    call there would cost about as much as the bisect per level it wraps):

    * ``cache`` - node id -> decoded :class:`Node`. Look here first and call
      :meth:`load` on a miss; only the forest adds or removes entries.
    * ``seq`` - the seq counter: an operation takes ``seq + 1`` (or
      :meth:`next_seq`).
    * ``committed_seq`` - ``seq`` at the last commit (or open). A node whose
      seq is above it was written since, so it is dirty and cached already;
      the others are clean (see :meth:`mark_dirty`). Read only.
    * ``dirty_trees`` - names of the trees whose record the next commit
      writes: a tree adds its name when its record (root, height, count,
      snap_seq) changes.
    * ``scratch`` - set by a read-only opener that changes the trees in
      memory (they cannot be committed): writes are allowed on a read-only
      store.
    """

    # A decoded node costs about a page (4-5 KiB: leaves keep arrays and
    # packed bytes; an inner node's lists more, but they are few), so the
    # default holds ~280 MiB at most: every node of a 4 GiB disk with dozens
    # of snapshots, with room above the dirty nodes a writer may hold until
    # its next commit (vdisk's AUTO_COMMIT_DIRTY_NODES, 32,768), which are
    # never evicted.
    CACHE_NODES = 65_536

    def __init__(self, store, cache_nodes: int = CACHE_NODES):
        self.store = store
        # Changes in memory only, on a read-only store: they are never
        # committed and die with the forest (a reader replaying a redo log).
        self.scratch = False
        self.cache_limit = cache_nodes
        self.cache: dict[int, Node] = {}
        self._dirty: set[int] = set()
        self._freed: set[int] = set()
        self._meta: dict[bytes, bytes | None] = {}
        self._trees: dict[str, BTree] = {}
        self.dirty_trees: set[str] = set()
        self._load_counters()

    @property
    def _cache(self) -> dict[int, Node]:
        # The cache's name before it was public: tests and
        # bench/btree_bench.py still read it so.
        return self.cache

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
        self.committed_seq = self.seq

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
            newest = max(rec.snap_seq, rec.created_seq, self.load(rec.root).seq if rec.root else 0)
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
        n = self.cache.get(node_id)
        if n is None:
            n = self.load(node_id)
        return n

    def load(self, node_id: int) -> Node:
        """Read and decode a node that is not in ``cache``, and cache it."""
        if node_id in self._freed:
            raise CorruptNode(node_id, "referenced after it was freed")
        d = fmt.decode_node(node_id, self.store.load(node_id))
        n = Node(node_id, d.seq, d.leaf, d.keys, d.vals, d.layout)
        if len(self.cache) >= self.cache_limit:
            self._evict()
        self.cache[node_id] = n
        return n

    def _evict(self):
        # Oldest-loaded clean nodes go first (dicts keep insertion order);
        # dirty nodes stay until commit writes them.
        target = self.cache_limit * 3 // 4
        drop = []
        excess = len(self.cache) - target
        for node_id in self.cache:
            if excess <= 0:
                break
            if node_id not in self._dirty:
                drop.append(node_id)
                excess -= 1
        for node_id in drop:
            del self.cache[node_id]

    def new_node(self, seq: int, leaf: bool, keys: list, vals: list, layout: Layout) -> Node:
        """A node under a fresh id, dirty: the next commit writes it."""
        n = Node(self._next_id, seq, leaf, keys, vals, layout)
        self._next_id += 1
        self.cache[n.id] = n
        self._dirty.add(n.id)
        return n

    def copy_node(self, node: Node, seq: int) -> Node:
        """A dirty copy of ``node`` under a fresh id, stamped ``seq`` (a shadow)."""
        return self.new_node(seq, node.leaf, node.keys[:], node.vals[:], node.layout)

    def mark_dirty(self, node: Node):
        """Have the next commit write a clean node that is being changed in place."""
        self._dirty.add(node.id)
        # Loading a node lower on its path may have evicted it while it was clean.
        self.cache[node.id] = node

    def free_node_ids(self, node_ids: Iterable[int]):
        """Reclaim nodes at the next commit (by snapshot deletion, and by a tree
        for the nodes only it reached that a change dropped)."""
        for node_id in node_ids:
            self._freed.add(node_id)
            self._dirty.discard(node_id)
            self.cache.pop(node_id, None)

    def is_freed(self, node_id: int) -> bool:
        """Whether an uncommitted change freed the node (the store still holds
        it until the next commit)."""
        return node_id in self._freed

    def has_node(self, node_id: int) -> bool:
        """Whether the node exists as this forest sees it: not freed, and
        cached or stored (decodable or not). What a checker asks to tell a
        missing node from a damaged one."""
        if node_id in self._freed:
            return False
        return node_id in self.cache or self.store.load(node_id) is not None

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
        root = self.new_node(seq, True, new_keys(), new_vals(), layout)
        rec = TreeRecord(root=root.id, height=1, snap_seq=0, count=0, created_seq=seq, layout=layout)
        t = BTree(self, name, rec)
        self._trees[name] = t
        self.dirty_trees.add(name)
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
        self.dirty_trees.update((name, snap_name))
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
        self.dirty_trees.add(dst_name)
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
        self.dirty_trees.add(new_name)
        return moved

    def drop_tree(self, name: str):
        """Forget a tree record. Its nodes are not reclaimed here."""
        if not self.has_tree(name):
            raise NotFound(f"no tree named {name!r}")
        self._trees.pop(name, None)
        self.dirty_trees.discard(name)
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

    def changed_beyond(self, trees) -> bool:
        """Whether anything but the trees named ``trees`` changed since the last
        commit: another tree, or a record (a tree made or dropped included)."""
        return bool(self._meta) or not self.dirty_trees <= set(trees)

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty or self._freed or self._meta or self.dirty_trees
                    or self.seq != self.committed_seq)

    def commit(self):
        """Write every change since the last commit in one atomic transaction."""
        if self.store.readonly:
            raise ReadOnly("metadata is open read-only")
        if not self.has_changes:
            return
        puts = _Encoded(self.cache, sorted(self._dirty))
        meta = dict(self._meta)
        for name in self.dirty_trees:
            meta[self._record_key(name)] = fmt.encode_tree_record(self._trees[name].rec)
        meta[_SEQ_KEY] = fmt.encode_u64(self.seq)
        meta[_NODE_ID_KEY] = fmt.encode_u64(self._next_id)
        self.store.commit(puts, sorted(self._freed), meta)
        self._dirty.clear()
        self._freed.clear()
        self._meta.clear()
        self.dirty_trees.clear()
        self.committed_seq = self.seq

    def rollback(self):
        """Discard every uncommitted change; open trees reload their records.

        A handle whose tree was not committed is detached: using it raises.
        """
        self.cache.clear()
        self._dirty.clear()
        self._freed.clear()
        self._meta.clear()
        self.dirty_trees.clear()
        self._load_counters()
        for name, t in list(self._trees.items()):
            buf = self.store.meta_get(self._record_key(name))
            if buf is None:
                del self._trees[name]
                t.__class__ = DetachedTree
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

