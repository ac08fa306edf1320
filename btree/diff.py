"""Comparing two trees of one forest by walking only the nodes they do not share.

Trees of a :class:`~vdisk.btree.forest.Forest` share nodes: a snapshot is a
second record pointing at the same root, and later changes copy only the
path they touch (the seq rule, :mod:`.tree`). A node id is never reused and
a node reachable from two trees is never changed in place (only a node
newer than its tree's newest snapshot is, and such a node is reached by one
tree alone), so **two trees that reach the same node id hold the same
entries below it**. :func:`diff_trees` uses that: it walks both trees
together, left to right, and skips every subtree whose root id it meets in
both, so its cost follows the nodes that differ, not the size of the trees.

What it returns is, for each tree, its entries outside the subtrees it was
found to share with the other, in key order. Removing the same entries from
both sides does not change what differs, so every entry that is in one tree
and not the other (same key and value) is in the result, whatever the
trees' shapes; entries of shared subtrees the walk did not recognise as
shared (shapes that drifted apart by splits and merges) may appear on both
sides with equal values, which a caller comparing the two lists discards.

Knows nothing of disks: keys and values are whatever the trees hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tree import BTree

__all__ = ["TreeDiff", "diff_trees"]


@dataclass
class TreeDiff:
    """Entries of trees ``a`` and ``b`` outside the subtrees both reach."""

    a: list = field(default_factory=list)     # (key, value) of a, in key order
    b: list = field(default_factory=list)     # (key, value) of b, in key order
    nodes_read: int = 0                       # nodes of either tree loaded or found in the cache
    shared_skipped: int = 0                   # subtrees met in both trees and not read


def diff_trees(a: BTree | None, b: BTree | None) -> TreeDiff:
    """The entries of ``a`` and of ``b`` outside the subtrees they share.

    ``a`` and ``b`` are trees of the same forest (node ids are compared);
    None stands for an empty tree. Neither may change during the call (the
    caller holds whatever lock serialises the forest).

    The walk keeps a frontier per tree: the subtrees still to visit, left
    to right, each with a lower bound of its keys and its height. At every
    step the two leftmost are compared: the same node id - skipped on both
    sides; otherwise the one that starts first (the taller one when both
    start together) is opened - an inner node's children join its
    frontier, a leaf's entries its result.
    """
    if a is not None and b is not None and a.forest is not b.forest:
        raise ValueError("diff_trees compares trees of one forest")
    out = TreeDiff()
    fronts = ([] if a is None else [(None, a.root, a.height)],
              [] if b is None else [(None, b.root, b.height)])
    results = (out.a, out.b)
    forest = (a or b).forest if (a or b) is not None else None
    while fronts[0] or fronts[1]:
        fa, fb = fronts
        if fa and fb:
            lo_a, id_a, h_a = fa[-1]
            lo_b, id_b, h_b = fb[-1]
            if id_a == id_b:
                fa.pop()
                fb.pop()
                out.shared_skipped += 1
                continue
            if _before(lo_a, lo_b) or (lo_a == lo_b and h_a > h_b):
                sides = (0,)
            elif _before(lo_b, lo_a) or h_b > h_a:
                sides = (1,)
            else:
                sides = (0, 1)
        else:
            sides = (0,) if fa else (1,)
        for side in sides:
            lo, node_id, height = fronts[side].pop()
            node = forest.node(node_id)
            out.nodes_read += 1
            if node.leaf:
                results[side].extend(zip(node.keys, node.vals))
                continue
            # Child 0 may hold keys below its separator (inserts below the
            # tree's first key go there): its bound is the parent's.
            keys, kids = node.keys, node.vals
            front = fronts[side]
            for i in range(len(kids) - 1, 0, -1):
                front.append((keys[i], kids[i], height - 1))
            front.append((lo, kids[0], height - 1))
    return out


def _before(x, y) -> bool:
    """Lower bound ``x`` is below ``y`` (None: no bound, below everything)."""
    if x is None:
        return y is not None
    return y is not None and x < y
