"""Structural checker for the trees of a :class:`~vdisk.btree.forest.Forest`.

A walker carries, for each node, the key bounds its parent allows, its depth,
and the path of node ids from the root; every complaint names the tree, the
node and that path, and the walk goes on after a problem so that one run
reports all of them.

Checked per node: it decodes (magic, version, length, checksum, own id), its
kind and layout fit its place, its entry count is within the fanout limits,
its keys ascend strictly and lie within the separator bounds, its seq is not
newer than its parent's (the invariant the seq rule relies on) nor, in a
snapshot, newer than the snapshot, and it is reached only once. Per tree: all
leaves at one depth and the entry count matches the record.

Per forest (:func:`check_forest`): a node reached by several trees is not
newer than the newest snapshot of any writable tree among them (else a write
to that tree would change it in place under the others), and, when every tree
is checked, no stored node is left that no tree reaches.

Each :class:`Problem` has a ``kind``, one per sort of damage:

============  ==============================================================
kind          meaning
============  ==============================================================
corrupt       the node does not decode (checksum, magic, length, own id)
missing       the node is not in the store at all
version       the node or tree record is from a newer format version
record        the tree record is damaged
layout        the node's key/value layout is not its tree's
key-order     keys do not ascend strictly
bounds        a key lies outside the separators of the parent
fanout        more entries than fit, or fewer than the minimum
depth         leaves at different depths, or not at the record's height
seq           a node newer than its parent, or than its snapshot
shared        a node shared with other trees is newer than a writable
              sharer's newest snapshot, so that tree would change it in place
count         the record's entry count is not what the tree holds
shape         a node reached twice within one tree
leak          stored nodes that no tree reaches
============  ==============================================================

``known`` lets a caller skip subtrees verified before: map node id ->
:class:`Summary` of that subtree, filled by earlier calls. A node found there
is accepted without reading it or its subtree again; only its summary is held
against the bounds and depth of its new place. That is how verifying a chain
of snapshots costs what differs between them (design notes, 3).

``visit(tree, node, lo, hi)`` lets a layer above check what the entries mean
(extent maps, say) at the same cost: it is called once for each node read and
verified, never for nodes accepted from ``known``, so a leaf shared by many
trees is seen once, by the first tree that reaches it.
"""

from __future__ import annotations

import operator
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

from vdisk.errors import IntegrityError, UnsupportedVersion

from .forest import Forest
from .tree import BTree


class Summary(NamedTuple):
    """What a verified subtree looks like from above.

    A tuple (a verify keeps one per node it read): no per-instance dict for
    the garbage collector to walk.
    """

    seq: int
    level: int        # 0 for a leaf, parent = child + 1
    entries: int
    min_key: object   # None for an empty subtree
    max_key: object


@dataclass
class Problem:
    tree: str
    node_id: int | None
    path: tuple
    kind: str
    message: str

    def __str__(self):
        where = f"tree {self.tree!r}"
        if self.node_id is not None:
            where += f" node {self.node_id}"
        if len(self.path) > 1:
            where += " (path " + "/".join(str(p) for p in self.path) + ")"
        return f"{where}: {self.message}"


@dataclass
class TreeCheck:
    tree: str
    nodes_checked: int = 0
    nodes_shared: int = 0
    entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    reached: set = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_tree(forest: Forest, name: str, known: dict | None = None, visit=None,
               keep_leaves: bool = True) -> TreeCheck:
    """Check one tree; record each verified node's summary in ``known``.

    With ``keep_leaves`` false, a leaf the walk loads is dropped from the
    forest's cache again once checked (a leaf that was cached before stays):
    for a big map that nothing looks up afterwards, so that its ten thousand
    decoded leaves neither push more useful nodes out of the cache nor sit in
    memory for the garbage collector to traverse.
    """
    if known is None:
        known = {}
    result = TreeCheck(name)
    try:
        tree = forest.tree(name)
    except IntegrityError as e:
        kind = "version" if isinstance(e, UnsupportedVersion) else "record"
        result.problems.append(Problem(name, None, (), kind, str(e)))
        return result
    rec = tree.rec
    limit_seq = rec.snap_seq if rec.frozen else None
    walk = _walker(forest, tree, limit_seq, known, result, visit, keep_leaves)
    summary = walk(rec.root, None, None, 0, (rec.root,), None)
    if summary is not None:
        if summary.level != rec.height - 1 and not any(p.kind == "depth" for p in result.problems):
            result.problems.append(Problem(name, rec.root, (rec.root,), "depth",
                                           f"record says height {rec.height}, tree has {summary.level + 1}"))
    total = summary.entries if summary is not None else None
    # With part of the tree unreadable the total is unknown, not wrong.
    unreadable = any(p.kind in _UNREADABLE for p in result.problems)
    if total is not None and total != rec.count and not unreadable:
        result.problems.append(Problem(name, None, (), "count",
                                       f"record says {rec.count} entries, tree holds {total}"))
    result.entries = total or 0
    return result


_UNREADABLE = ("corrupt", "missing", "version", "layout")


def _node_failure_kind(forest, node_id, error) -> str:
    if isinstance(error, UnsupportedVersion):
        return "version"
    if not forest.has_node(node_id):
        return "missing"
    return "corrupt"


def _walker(forest: Forest, tree: BTree, limit_seq, known: dict, result: TreeCheck, visit, keep_leaves: bool):
    """The walk of one tree: ``walk(node_id, lo, hi, depth, path, parent_seq)``
    verifies the subtree at node_id and returns its :class:`Summary`, or None
    if it cannot be read.

    A closure over what every node of the tree is held against, so each node
    costs its own checks and not a dozen arguments and look-ups: a metadata
    verify reads ten thousand leaves of one map, and this is its loop.
    """
    name = tree.name
    height = tree.rec.height
    layout = tree.layout
    key_layout = layout.key
    leaf_cap, inner_cap = tree.leaf_cap, tree.inner_cap
    leaf_min, inner_min = tree.leaf_min, tree.inner_min
    reached = result.reached
    problems = result.problems
    known_get = known.get
    cache_get = forest.cache.get
    uncache = forest.cache.pop
    load = forest.load
    lt = operator.lt
    int_keys = key_layout == "u64"

    def problem(node_id, path, kind, msg):
        problems.append(Problem(name, node_id, path, kind, msg))

    def walk(node_id, lo, hi, depth, path, parent_seq):
        if node_id in reached:
            problem(node_id, path, "shape", "node is reached twice in one tree")
            return None
        reached.add(node_id)

        s = known_get(node_id)
        if s is not None:
            result.nodes_shared += 1
            seq, level, _n, smin, smax = s
            # What _check_summary_fits checks, asked at once: it runs (and
            # says what is wrong) only when something is.
            if (level != height - 1 - depth or (parent_seq is not None and seq > parent_seq)
                    or (limit_seq is not None and seq > limit_seq)
                    or (smin is not None and ((lo is not None and smin < lo) or (hi is not None and smax >= hi)))):
                _check_summary_fits(s, lo, hi, parent_seq, limit_seq, height, depth,
                                    lambda kind, msg: problem(node_id, path, kind, msg))
            return s

        node = cache_get(node_id)
        if node is None:
            try:
                node = load(node_id)
            except IntegrityError as e:
                problem(node_id, path, _node_failure_kind(forest, node_id, e), str(e))
                return None
            if not keep_leaves and node.leaf:
                uncache(node_id, None)      # just loaded, so clean: nothing is lost
        result.nodes_checked += 1
        leaf = node.leaf
        level = height - 1 - depth
        if leaf != (level == 0):
            problem(node_id, path, "depth", f"{'leaf' if leaf else 'inner node'} at depth {depth} of a tree "
                    f"of height {height}")
        node_layout = node.layout
        same_layout = node_layout is layout or node_layout == layout
        if not same_layout and (node_layout.key != key_layout or leaf):
            problem(node_id, path, "layout", f"layout {node_layout} does not match the tree's {layout}")
            if node_layout.key != key_layout:
                return None  # its keys do not even compare with the tree's
        seq = node.seq
        if parent_seq is not None and seq > parent_seq:
            problem(node_id, path, "seq", f"seq {seq} is newer than its parent's {parent_seq}")
        if limit_seq is not None and seq > limit_seq:
            problem(node_id, path, "seq", f"seq {seq} is newer than the snapshot's {limit_seq}")

        keys = node.keys
        n = len(keys)
        if leaf:
            cap = leaf_cap
            minimum = 0 if depth == 0 else leaf_min
            if int_keys and n > 1 and keys[-1] - keys[0] == n - 1:
                # n integer keys from k to k + n - 1 ascend strictly exactly
                # when they are k, k + 1, ...: one list compare, the common
                # case of a checksum leaf (a run of VBAs).
                ordered = (keys.tolist() if type(keys) is array else list(keys)) == list(range(keys[0], keys[0] + n))
            else:
                # map() compares in C; the index is looked for only when something is wrong.
                ordered = all(map(lt, keys, keys[1:]))
            first = 0
        else:
            cap = inner_cap
            minimum = 2 if depth == 0 else inner_min
            # Key 0 of an inner node carries no meaning (see format.py).
            tail = keys[1:]
            ordered = all(map(lt, tail, tail[1:]))
            first = 1
        if n > cap:
            problem(node_id, path, "fanout", f"{n} entries, more than the limit {cap}")
        if n < minimum:
            problem(node_id, path, "fanout", f"{n} entries, fewer than the minimum {minimum}")
        if not ordered:
            for a in range(first, n - 1):
                if not keys[a] < keys[a + 1]:
                    problem(node_id, path, "key-order", f"key {keys[a + 1]!r} at index {a + 1} is not above "
                            f"{keys[a]!r}")
                    break
        if n > first:
            if lo is not None and keys[first] < lo:
                problem(node_id, path, "bounds", f"key {keys[first]!r} is below the separator {lo!r}")
            if hi is not None and keys[-1] >= hi:
                problem(node_id, path, "bounds", f"key {keys[-1]!r} is not below the next separator {hi!r}")

        # A leaf whose values are not the tree's layout would hand the visitor garbage.
        if visit is not None and (same_layout or not leaf):
            visit(tree, node, lo, hi)

        if leaf:
            s = Summary(seq, 0, n, keys[0] if n else None, keys[-1] if n else None)
        else:
            entries = 0
            child_min = child_max = None
            child_level = None
            bounds = list(keys[1:])
            for child, clo, chi in zip(node.vals, [lo, *bounds], [*bounds, hi]):
                cs = walk(child, clo, chi, depth + 1, path + (child,), seq)
                if cs is None:
                    continue
                entries += cs.entries
                if cs.min_key is not None:
                    if child_min is None:
                        child_min = cs.min_key
                    child_max = cs.max_key
                if child_level is None:
                    child_level = cs.level
                elif cs.level != child_level:
                    problem(node_id, path, "depth", f"child {child} has leaves at another depth than its siblings")
            s = Summary(seq, (child_level if child_level is not None else level - 1) + 1,
                        entries, child_min, child_max)
        known[node_id] = s
        return s

    return walk


def _check_summary_fits(s: Summary, lo, hi, parent_seq, limit_seq, height, depth, problem):
    level = height - 1 - depth
    if s.level != level:
        problem("depth", f"shared subtree of height {s.level + 1} at depth {depth} of a tree of height {height}")
    if parent_seq is not None and s.seq > parent_seq:
        problem("seq", f"seq {s.seq} is newer than its parent's {parent_seq}")
    if limit_seq is not None and s.seq > limit_seq:
        problem("seq", f"seq {s.seq} is newer than the snapshot's {limit_seq}")
    if s.min_key is not None:
        if lo is not None and s.min_key < lo:
            problem("bounds", f"shared subtree's key {s.min_key!r} is below the separator {lo!r}")
        if hi is not None and s.max_key >= hi:
            problem("bounds", f"shared subtree's key {s.max_key!r} is not below the next separator {hi!r}")


def check_forest(forest: Forest, names: list[str] | None = None, unreferenced: bool = True) -> list[TreeCheck]:
    """Check trees in the given order, reusing verified subtrees between them.

    With ``unreferenced``, stored nodes that no checked tree reaches are
    reported as leaks (only meaningful when every tree is checked).
    """
    known: dict = {}
    results = []
    for name in names if names is not None else forest.tree_names():
        results.append(check_tree(forest, name, known))
    check_sharing(forest, results, known)
    if unreferenced and names is None:
        reached = set().union(*(r.reached for r in results)) if results else set()
        leaked = [i for i in forest.store.node_ids() if i not in reached and not forest.is_freed(i)]
        if leaked:
            shown = ", ".join(str(i) for i in leaked[:10]) + (" ..." if len(leaked) > 10 else "")
            leak = TreeCheck("(store)")
            leak.problems.append(Problem("(store)", None, (), "leak",
                                         f"{len(leaked)} stored nodes are reached by no tree: {shown}"))
            results.append(leak)
    return results


def check_sharing(forest: Forest, results: list[TreeCheck], known: dict):
    """A node several trees reach must be old enough that no writable one changes it in place.

    Checking where sharing starts is enough: every node below is at least as
    old (the seq check), so a subtree first met through a shared node is safe
    when that node is.
    """
    # Set operations in C find the nodes more than one tree reaches (a few
    # hundred, where the trees reach tens of thousands between them).
    seen: set = set()
    several: set = set()
    for r in results:
        several |= r.reached & seen
        seen |= r.reached
    records = {}
    for node_id in sorted(several):
        if node_id not in known:
            continue
        seq = known[node_id].seq
        checks = [r for r in results if node_id in r.reached]
        names = [c.tree for c in checks]
        for c in checks:
            rec = records.get(c.tree)
            if rec is None:
                rec = records[c.tree] = forest.tree(c.tree).rec
            if not rec.frozen and seq > rec.snap_seq:
                others = ", ".join(repr(n) for n in names if n != c.tree)
                c.problems.append(Problem(
                    c.tree, node_id, (node_id,), "shared",
                    f"seq {seq} is newer than the tree's newest snapshot ({rec.snap_seq}) but the node "
                    f"is shared with {others}: a write here would change it in place under them"))
