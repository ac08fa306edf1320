"""Phase 2 of ``vdisk verify``: every tree, oldest snapshot first (design notes, 3).

Snapshots are walked parents before children, then the running point, then
the VBA, checksum and free maps, through :func:`vdisk.btree.check.check_tree`.
One map of verified nodes is shared by every walk, so when a tree reaches a
node an earlier one verified (its parent's, mostly) it accepts the node and
its whole subtree without reading them again: N snapshots that differ little
cost little more than one. Each node that is read goes once through the
visitor of its map (:mod:`.verify_visitors`).
"""

from __future__ import annotations

from vdisk.btree.check import check_sharing, check_tree
from vdisk.names import ANCHOR_TREE, CSUM_TREE, FREE_TREE, RUNNING_TREE, SNAP_TREE_PREFIX, VBA_TREE
from vdisk.extents import ExtentMap

from . import verify_visitors as visitors
from .verify_report import tree_label
from .verify_state import CORE_TREES, UNREADABLE


def tree_order(v) -> list[str]:
    """Snapshots oldest first (parents before children), then the rest."""
    names = set(v.forest.tree_names())
    # Two snapshots taken with no change between have the same seq, so
    # seq alone does not put a parent first.
    by_age = sorted(v.records.values(), key=lambda r: (r.seq, r.created_ns, r.name))
    snaps: list[str] = []
    placed: set[str] = set()
    for rec in by_age:
        chain = []
        while rec is not None and rec.name not in placed:
            placed.add(rec.name)
            chain.append(rec.name)
            rec = v.records.get(rec.parent) if rec.parent else None
        snaps.extend(reversed(chain))
    order = [SNAP_TREE_PREFIX + n for n in snaps if SNAP_TREE_PREFIX + n in names]
    order += sorted(n for n in names if n not in order and n not in CORE_TREES)
    order += [n for n in CORE_TREES if n in names]
    return order


def _lba_context(v, name: str) -> visitors.LbaTree | None:
    if name in v.incomplete:
        return None
    bs = v.block_size
    state = v.state
    if name == RUNNING_TREE:
        rec = None
        size = v.config.size if v.config else None
        born = state.vba_next if state else None
        parent_name = state.parent if state else None
    elif name == ANCHOR_TREE:
        # An online conversion's second writable line (vdisk/anchor.py).
        rec = None
        size = v.config.size if v.config else None
        born = v.anchor.vba_next if v.anchor else None
        parent_name = v.anchor.parent if v.anchor else None
    else:
        rec = v.records.get(name[len(SNAP_TREE_PREFIX):])
        size = rec.size if rec else None
        born = rec.vba_watermark if rec else None
        parent_name = rec.parent if rec else None
    parent = v.records.get(parent_name) if parent_name else None
    parent_map = None
    parent_tree = SNAP_TREE_PREFIX + parent_name if parent else None
    if parent is not None and parent_tree in v.lba_trees and parent_tree not in v.incomplete:
        parent_map = ExtentMap(v.forest.tree(parent_tree))
    return visitors.LbaTree(name, tree_label(name), size // bs if size is not None and bs else None, born,
                            parent_map, tree_label(parent_tree) if parent else None,
                            parent.vba_watermark if parent else 0, rec is not None)


def walk_trees(v) -> list:
    """Walk every tree; the checker's result per tree, in walk order."""
    f = v.forest
    order = tree_order(v)
    known: dict = {}
    results = []
    for i, name in enumerate(order):
        v.advance("trees", i, len(order))
        ctx = None
        if name in (RUNNING_TREE, ANCHOR_TREE) or name.startswith(SNAP_TREE_PREFIX):
            ctx = _lba_context(v, name)
            if ctx is not None:
                v.lba_trees[name] = ctx
            visit = visitors.lba_visitor(v, ctx)
        elif name in v.incomplete:
            visit = visitors.node_visitor(v, None)
        elif name == VBA_TREE:
            visit = visitors.vba_visitor(v)
        elif name == CSUM_TREE:
            visit = visitors.csum_visitor(v)
        elif name == FREE_TREE:
            visit = visitors.free_visitor(v)
        else:
            visit = visitors.node_visitor(v, None)
        # Nothing looks up the VBA, checksum or free maps after their walk,
        # and the checksum map is most of the disk's nodes: its leaves are
        # not kept in the cache (the LBA trees' are, for the lookups into a
        # parent and the neighbours of a leaf).
        r = check_tree(f, name, known, visit=visit, keep_leaves=name not in (VBA_TREE, CSUM_TREE, FREE_TREE))
        results.append(r)
        if any(p.kind in UNREADABLE for p in r.problems):
            v.incomplete.add(name)
        v.report.nodes_checked += r.nodes_checked
        v.report.nodes_shared += r.nodes_shared
        v.report.per_tree.append({"tree": tree_label(name), "nodes_checked": r.nodes_checked,
                                  "nodes_shared": r.nodes_shared, "entries": r.entries})
        add_tree_problems(v, r.problems)
        if ctx is not None:
            visitors.check_last_extent(v, ctx)
    v.advance("trees", len(order), len(order))
    v.report.trees = len(results)
    seen = [len(r.problems) for r in results]
    check_sharing(f, results, known)
    for r, n in zip(results, seen):
        add_tree_problems(v, r.problems[n:])
    return results


def add_tree_problems(v, problems):
    """The B+tree checker's problems, named the way the report names trees."""
    for p in problems:
        where = tree_label(p.tree)
        if p.node_id is not None:
            where += f" node {p.node_id}"
            if len(p.path) > 1:
                where += " (path " + "/".join(str(x) for x in p.path) + ")"
        v.problem(p.kind, where, p.message)
