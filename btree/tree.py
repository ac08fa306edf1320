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

This module holds :class:`BTree` and the seq rule itself
(``BTree._make_path_writable``, the one place that decides in place or
shadow); the tree's reads are in :mod:`.reads`, its writes in :mod:`.writes`,
the forest (cache, counters, records, commit) in :mod:`.forest`. One class,
three modules: an underscore member of BTree is private to the class, and
its three modules share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vdisk.errors import NotFound

from .format import TreeRecord
from .node import Node, leaf_fields
from .reads import TreeReads
from .writes import TreeWrites

if TYPE_CHECKING:  # the forest module imports this one: no cycle at run time
    from .forest import Forest

__all__ = ["BTree", "DetachedTree", "Node", "leaf_fields"]


class BTree(TreeReads, TreeWrites):
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
        TreeWrites.__init__(self, rec.layout)

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

    def _touch(self):
        self.forest.dirty_trees.add(self.name)

    # ----------------------------------------------------------- the seq rule

    def _make_path_writable(self, path: list, leaf: Node, seq: int) -> Node:
        """Make the leaf and every ancestor on ``path`` writable by operation ``seq``; return the leaf.

        The seq rule (module docstring), bottom up: a node newer than the
        tree's newest snapshot is changed in place, any other is copied and
        its parent pointed at the copy. Every node on the path is stamped
        ``seq``, so no child is newer than its parent. ``path`` is updated
        in place to hold the writable nodes.

        Every change of a node goes through here (for a sibling too: pass
        its path), on the hot path of every insert, so the rule is inline:
        an exclusive node already dirty costs two comparisons.
        """
        f = self.forest
        snap = self.rec.snap_seq
        committed = f.committed_seq
        depth = len(path)           # of ``node``: the leaf, then each ancestor up to the root
        node = leaf
        copy = None                 # the copy just made of node's child, for node to point at
        copied = False
        while True:
            node_seq = node.seq
            if node_seq > snap:
                # Written after the newest snapshot: only this tree reaches it.
                if node_seq <= committed:
                    f.mark_dirty(node)  # clean until now (above committed_seq: dirty already)
                node.seq = seq
                if copy is not None:
                    node.vals[path[depth][1]] = copy.id
                    copy = None
            else:
                # It may be shared with a snapshot: it never changes; a copy does.
                w = f.copy_node(node, seq)
                copied = True
                if depth < len(path):
                    i = path[depth][1]
                    if copy is not None:
                        w.vals[i] = copy.id
                    path[depth] = (w, i)
                else:
                    leaf = w
                copy = w
            if not depth:
                break
            depth -= 1
            node = path[depth][0]
        if copied:
            if copy is not None:
                self.rec.root = copy.id
            self._touch()
        return leaf

    def _free(self, node: Node):
        """Forget a node a change dropped from this tree; reclaim it if only this tree reached it.

        The seq rule's other half: a node newer than the newest snapshot is
        this tree's alone, so nothing else can still reach it.
        """
        if node.seq > self.rec.snap_seq:
            self.forest.free_node_ids((node.id,))


class DetachedTree(BTree):
    """A handle to a tree that :meth:`Forest.rollback` discarded.

    Every use fails with NotFound naming the tree, instead of reading
    whatever its stale record points at.
    """

    def __getattribute__(self, attr):
        if attr in ("name", "__class__", "__dict__") or attr.startswith("__"):
            return object.__getattribute__(self, attr)
        name = object.__getattribute__(self, "name")
        raise NotFound(f"tree {name!r} was discarded by a rollback (never committed); open it again")
