"""Which blocks and nodes a snapshot (or the running point) holds alone.

Ownership follows from two facts of the design:

* Node sharing: a tree that started as a copy of snapshot S reaches S's nodes
  only through nodes it has not rewritten, and every node it did rewrite has a
  seq above S's. Walking it while descending only into nodes newer than S
  yields the roots of the subtrees it still shares with S; S's nodes outside
  those subtrees are S's alone (with respect to that tree).
* VBA birth: a VBA is born once, at the running point. A snapshot maps VBAs
  born before it; VBAs below its parent's watermark were born before the
  parent and are held by the parent too.

So the candidates for "only S maps this block" are S's entries outside the
subtrees its children share, with VBA at or above its parent's watermark; each
is then checked by lookup in every tree that could map it (the trees created
after S's parent). The cost follows what differs, not the disk size.
"""

from __future__ import annotations

from vdisk.extents import LEN_BITS, MAX_LEN, ExtentMap
from vdisk.names import ANCHOR_TREE


def shared_roots(forest, tree_name: str, since_seq: int) -> set[int]:
    """Roots of the subtrees of ``tree_name`` last written at or before ``since_seq``."""
    tree = forest.tree(tree_name)
    out = set()
    stack = [tree.root]
    while stack:
        node = forest.node(stack.pop())
        if node.seq <= since_seq:
            out.add(node.id)
        elif not node.leaf:
            stack.extend(node.vals)
    return out


def exclusive_nodes(forest, tree_name: str, parent_seq: int | None, shared: set[int]):
    """Nodes of ``tree_name`` newer than its parent snapshot and not in ``shared``.

    Yields each such node; shared subtrees are never read.
    """
    tree = forest.tree(tree_name)
    stack = [tree.root]
    while stack:
        node_id = stack.pop()
        if node_id in shared:
            continue
        node = forest.node(node_id)
        if parent_seq is not None and node.seq <= parent_seq:
            continue
        yield node
        if not node.leaf:
            stack.extend(node.vals)


def _tree_of(name: str | None) -> str:
    from vdisk.disk import RUNNING_TREE, SNAP_TREE_PREFIX
    return RUNNING_TREE if name is None else SNAP_TREE_PREFIX + name


def snapshot_neighbours(disk, name: str):
    """(record, parent record or None, child tree names, other tree names)."""
    recs = {r.name: r for r in disk.snapshot_records()}
    rec = recs[name]
    parent = recs.get(rec.parent) if rec.parent else None
    children = [_tree_of(r.name) for r in recs.values() if r.parent == name]
    if disk.state.parent == name:
        children.append(_tree_of(None))
    # An online conversion's anchor is the child of the last layer it froze.
    anchor = disk.anchor_record()
    if anchor is not None and anchor.parent == name:
        children.append(ANCHOR_TREE)
    # Any tree created after S's parent could map a VBA born after it.
    since = parent.seq if parent else -1
    others = [_tree_of(r.name) for r in recs.values() if r.name != name and r.seq > since]
    others.append(_tree_of(None))
    if anchor is not None:
        others.append(ANCHOR_TREE)
    return rec, parent, children, others


def exclusive_runs(disk, name: str):
    """``(exclusive VBA runs, exclusive node ids)`` of snapshot ``name``.

    VBA runs are ``(vba, count)``, unsorted.
    """
    forest = disk.forest
    rec, parent, children, others = snapshot_neighbours(disk, name)
    shared = set()
    for child in children:
        shared |= shared_roots(forest, child, rec.seq)
    parent_seq = parent.seq if parent else None
    floor_vba = parent.vba_watermark if parent else 0
    maps = [ExtentMap(forest.tree(t)) for t in others]
    runs = []
    nodes = []
    for node in exclusive_nodes(forest, _tree_of(name), parent_seq, shared):
        nodes.append(node.id)
        if not node.leaf:
            continue
        for lba, vba, count in entries_from(node, floor_vba):
            runs.extend(_unshared(lba, vba, count, maps))
    return runs, nodes


def entries_from(leaf, floor_vba: int):
    """A leaf's ``(lba, vba, count)`` extents, cut to VBAs at or above ``floor_vba``.

    VBAs below a snapshot's parent's watermark belong to the parent too, so
    they are never the snapshot's alone.
    """
    for lba, packed in zip(leaf.keys, leaf.vals):
        vba, count = packed >> LEN_BITS, packed & MAX_LEN
        if vba + count <= floor_vba:
            continue
        if vba < floor_vba:
            lba, count, vba = lba + floor_vba - vba, count - (floor_vba - vba), floor_vba
        yield lba, vba, count


def _unshared(lba: int, vba: int, count: int, maps: list[ExtentMap]):
    """Sub-runs of lba->vba that no tree in ``maps`` maps identically."""
    todo = [(lba, vba, count)]
    for m in maps:
        nxt = []
        for l, v, n in todo:
            pos = l
            for s, t, c in m.pieces(l, n):
                if t == v + (s - l):
                    if s > pos:
                        nxt.append((pos, v + pos - l, s - pos))
                    pos = s + c
            if pos < l + n:
                nxt.append((pos, v + pos - l, l + n - pos))
        todo = nxt
        if not todo:
            break
    return [(v, n) for _l, v, n in todo]


def exclusive_blocks(disk, name: str) -> int:
    runs, _nodes = exclusive_runs(disk, name)
    return sum(n for _, n in runs)


def drop_running_point_exclusive(disk):
    """Free what only the running point holds (before it is replaced by revert)."""
    forest = disk.forest
    tree = forest.tree(_tree_of(None))
    wm = disk.state.vba_watermark
    runs = []
    nodes = []
    for node in exclusive_nodes(forest, tree.name, tree.snap_seq, set()):
        nodes.append(node.id)
        if node.leaf:
            for packed in node.vals:
                vba, count = packed >> 24, packed & MAX_LEN
                if vba + count > wm:
                    start = max(vba, wm)
                    runs.append((start, vba + count - start))
    for vba, count in sorted(runs):
        disk.forget_vbas(vba, count)
    forest.free_node_ids(nodes)
