"""The whole-leaf checks of verify say exactly what the per-entry loops said.

The visitors check a healthy leaf in C loops (``map``, ``min``, ``max``,
``all``) and go through its entries one by one only when something is wrong.
These tests hold them against the per-entry loops they replaced (kept here as
the reference, as they were in ``snapshots/verify_visitors.py``), on random
leaves with every kind of damage those loops named: same problems, in the
same order, and the same runs gathered for the cross-checks. The same for
the run algebra and the B+tree checker's sharing check.
"""

from __future__ import annotations

import bisect
import random
from array import array
from types import SimpleNamespace

import pytest

from vdisk.btree import Forest, Layout, MemoryNodeStore, check_tree
from vdisk.btree.check import check_sharing
from vdisk.errors import VdiskError
from vdisk.extents import LEN_BITS, MAX_LEN, ExtentMap, pack
from vdisk.snapshots import verify_cross, verify_visitors
from vdisk.snapshots.verify_runs import merge, merge_sorted, span
from vdisk.snapshots.verify_state import Verification

SEEDS = range(300)


# ------------------------------------------------------------------ the reference

def ref_lba_leaf(v, ctx, node, rp_wm):
    """The LBA leaf loop as it was: problems, refs, rp_shared and the clipped runs."""
    label = ctx.label
    keys, vals = node.keys, node.vals
    size, born, parent_map, parent_wm = ctx.size_blocks, ctx.born_before, ctx.parent_map, ctx.parent_wm
    refs = []
    prev_end = prev_key = None
    clipped = []
    for k, packed in zip(keys, vals):
        vba, n = packed >> LEN_BITS, packed & MAX_LEN
        refs.append((vba, vba + n, label, k))
        if parent_map is not None and vba < parent_wm:
            clipped.append((k, vba, min(n, parent_wm - vba)))
        if ctx.is_snapshot and rp_wm is not None and vba + n > rp_wm:
            head = max(0, rp_wm - vba)
            v.rp_shared.append((label, k + head, vba + head, n - head))
        if (n == 0 or vba == 0 or (prev_end is not None and k < prev_end)
                or (size is not None and k + n > size) or (born is not None and vba + n > born)):
            verify_visitors._lba_extent_problems(v, ctx, node, k, vba, n, prev_end, prev_key)
        prev_end, prev_key = k + n, k
    if clipped:
        ref_parent_holds(v, ctx, clipped)
    return refs


def ref_parent_holds(v, ctx, runs):
    lo = runs[0][0]
    hi = max(k + m for k, _v, m in runs)
    try:
        pieces = ctx.parent_map.pieces(lo, hi - lo)
    except VdiskError:
        ctx.parent_map = None
        v.note(f"{ctx.label}: not compared with its parent, whose tree cannot be read")
        return
    starts = [s for s, _t, _n in pieces]
    for k, vba, m in runs:
        pos = k
        i = max(0, bisect.bisect_right(starts, k) - 1)
        missing = []
        while i < len(pieces) and pieces[i][0] < k + m:
            s, t, c = pieces[i]
            a, b = max(s, k), min(s + c, k + m)
            if a < b and t + (a - s) == vba + (a - k):
                if a > pos:
                    missing.append((pos, a))
                pos = max(pos, b)
            i += 1
        if pos < k + m:
            missing.append((pos, k + m))
        for a, b in missing:
            v.problem("ownership", f"{ctx.label} LBA {span(a, b)}",
                      f"maps VBA {span(vba + a - k, vba + b - k)}, born before its parent {ctx.parent_label} "
                      f"(watermark {ctx.parent_wm}), which does not map it so: deleting the parent "
                      f"would free it")


def ref_vba_leaves(v, nodes):
    state = v.state
    prev_end = 0
    for node in nodes:
        for vba, packed in zip(node.keys, node.vals):
            p, n = packed >> LEN_BITS, packed & MAX_LEN
            if n == 0 or vba < prev_end or (state is not None and (vba + n > state.vba_next
                                                                   or p + n > state.pba_end)):
                verify_visitors._vba_extent_problems(v, node, vba, p, n, prev_end)
                if n == 0:
                    continue
            prev_end = vba + n
            v.mapped.append((vba, vba + n, p))


def ref_merge(runs):
    out = []
    for s, e in sorted(runs):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# ------------------------------------------------------------------ helpers

class _NoNeighbours:
    """A tree with nothing outside the leaf under test (its neighbours are checked elsewhere)."""

    def floor(self, key):
        return None

    def items(self, start=None, stop=None):
        return iter(())


def _verification(state=None):
    v = Verification("/nonexistent", None, None)
    v.forest = SimpleNamespace(seq=10)         # the seq counter every node is held against
    v.state = state
    return v


def _leaf(node_id, entries):
    keys = array("Q", [k for k, _ in entries])
    vals = array("Q", [p for _, p in entries])
    return SimpleNamespace(id=node_id, seq=1, leaf=True, keys=keys, vals=vals, layout=Layout("u64", "u64"))


def _random_lba_entries(rng, damage: bool):
    """Sorted LBA keys with extents, mostly healthy; with ``damage`` some of every kind."""
    out = []
    k = rng.randrange(0, 50)
    for _ in range(rng.randrange(1, 40)):
        n = rng.randrange(1, 9)
        vba = rng.randrange(1, 400)
        if damage:
            roll = rng.random()
            if roll < 0.08:
                n = 0                                   # empty
            elif roll < 0.16:
                vba = 0                                 # VBA 0
            elif roll < 0.24 and out:
                k = max(out[-1][0] + 1, k - rng.randrange(1, 6))   # overlaps the previous extent
        out.append((k, pack(vba, n)))
        k += n + rng.randrange(0, 3)
    return out


def _problems(v):
    return [(p.kind, p.where, p.what) for p in v.problems]


# ------------------------------------------------------------------ LBA leaves

@pytest.mark.parametrize("seed", SEEDS)
def test_lba_leaf_checks_match_the_per_entry_loop(seed):
    rng = random.Random(seed)
    damage = seed % 3 != 0
    entries = _random_lba_entries(rng, damage)
    size = rng.choice([None, entries[-1][0] + 4, entries[-1][0] + 100])
    born = rng.choice([None, 300, 500])
    rp_wm = rng.choice([None, 200, 450])
    is_snapshot = rng.random() < 0.7
    node = _leaf(7, entries)
    ctx_args = ("snap/s1", "snapshot 's1'", size, born, None, None, 0, is_snapshot)
    state = SimpleNamespace(vba_watermark=rp_wm) if rp_wm is not None else None

    ref = _verification(state)
    ref_refs = ref_lba_leaf(ref, verify_visitors.LbaTree(*ctx_args), node, rp_wm)

    new = _verification(state)
    visit = verify_visitors.lba_visitor(new, verify_visitors.LbaTree(*ctx_args))
    visit(_NoNeighbours(), node, None, None)

    assert _problems(new) == _problems(ref)
    assert new.refs == ref_refs
    assert new.rp_shared == ref.rp_shared
    assert list(new.ref_packed) == list(node.vals)
    assert new.report.extents == len(entries)


def _parent_tree(rng):
    """A small LBA tree (several leaves) in memory, and its extents."""
    f = Forest(MemoryNodeStore())
    t = f.create_tree("parent", Layout("u64", "u64"))
    entries = []
    k = 0
    for _ in range(rng.randrange(1, 300)):
        n = rng.randrange(1, 9)
        entries.append((k, pack(rng.randrange(1, 400), n)))
        k += n + rng.randrange(0, 3)
    for key, packed in entries:
        t.insert(key, packed)
    return f, t, entries


@pytest.mark.parametrize("seed", SEEDS)
def test_parent_holds_matches_the_per_entry_loop(seed):
    """A child leaf made from its parent's entries: copied, rewritten, split, shifted."""
    rng = random.Random(seed)
    _f, parent, pentries = _parent_tree(rng)
    wm = rng.choice([100, 250, 401])
    lo = rng.randrange(len(pentries))
    child = []
    for k, packed in pentries[lo:lo + rng.randrange(1, 60)]:
        vba, n = packed >> LEN_BITS, packed & MAX_LEN
        roll = rng.random()
        if roll < 0.5:
            child.append((k, packed))                                   # the parent's own entry
        elif roll < 0.65 and n > 1:                                     # split: head and tail
            cut = rng.randrange(1, n)
            child.append((k, pack(vba, cut)))
            child.append((k + cut, pack(vba + cut, n - cut)))
        elif roll < 0.8:
            child.append((k, pack(rng.randrange(1, 500), n)))           # rewritten (old or new VBA)
        elif roll < 0.9:
            child.append((k, pack(vba + 1, n)))                         # off by one block
        # else: trimmed away
    if not child:
        child = [pentries[lo]]
    node = _leaf(9, child)
    ctx_args = ("snap/s2", "snapshot 's2'", None, None, ExtentMap(parent), "snapshot 's1'", wm, True)

    ref = _verification()
    ref_lba_leaf(ref, verify_visitors.LbaTree(*ctx_args), node, None)

    new = _verification()
    verify_visitors.lba_visitor(new, verify_visitors.LbaTree(*ctx_args))(_NoNeighbours(), node, None, None)

    assert _problems(new) == _problems(ref)


# ------------------------------------------------------------------ VBA leaves

@pytest.mark.parametrize("seed", SEEDS)
def test_vba_leaf_checks_match_the_per_entry_loop(seed):
    rng = random.Random(seed)
    damage = seed % 3 != 0
    nodes = []
    vba = rng.randrange(1, 20)
    for node_id in range(rng.randrange(1, 4)):
        entries = []
        for _ in range(rng.randrange(1, 30)):
            n = rng.randrange(1, 9)
            if damage and rng.random() < 0.1:
                n = 0
            if damage and rng.random() < 0.1:
                vba = max(1, vba - rng.randrange(1, 6))                 # overlap, maybe across leaves
            entries.append((vba, pack(rng.randrange(0, 600), n)))
            vba += n + rng.randrange(0, 3)
        # Keys ascend strictly within a leaf (the walk checks that).
        dedup = {}
        for k, p in entries:
            dedup.setdefault(k, p)
        nodes.append(_leaf(node_id, sorted(dedup.items())))
    state = rng.choice([None, SimpleNamespace(vba_next=vba - rng.randrange(0, 5), pba_end=rng.choice([300, 700]))])

    ref = _verification(state)
    ref_vba_leaves(ref, nodes)

    new = _verification(state)
    visit = verify_visitors.vba_visitor(new)
    for node in nodes:
        visit(None, node, None, None)

    assert _problems(new) == _problems(ref)
    assert new.mapped == ref.mapped
    packed = [pack(p, e - s) for s, e, p in ref.mapped]
    assert list(new.pba_packed) == packed


# ------------------------------------------------------------------ checksum leaves

def ref_csum_runs(nodes):
    runs = []
    for node in nodes:
        keys = node.keys
        if not keys:
            continue
        if keys[-1] - keys[0] == len(keys) - 1:
            spans = [(keys[0], keys[-1] + 1)]
        else:
            spans = []
            start = prev = keys[0]
            for k in keys[1:]:
                if k != prev + 1:
                    spans.append((start, prev + 1))
                    start = k
                prev = k
            spans.append((start, prev + 1))
        if runs and spans[0][0] == runs[-1][1]:
            runs[-1] = (runs[-1][0], spans[0][1])
            spans = spans[1:]
        runs.extend(spans)
    return runs


@pytest.mark.parametrize("seed", SEEDS)
def test_checksum_leaf_runs_match_the_old_visitor(seed):
    rng = random.Random(seed)
    nodes = []
    k = rng.randrange(0, 5)
    for node_id in range(rng.randrange(1, 6)):
        keys = []
        for _ in range(rng.randrange(0, 20)):
            keys.append(k)
            k += 1 if rng.random() < 0.8 else rng.randrange(2, 5)
        node = _leaf(node_id, [(key, 0) for key in keys])
        node.seq = rng.choice([1, 11])               # 11: above the counter (10)
        nodes.append(node)
    v = _verification()
    visit = verify_visitors.csum_visitor(v)
    tree = SimpleNamespace(name="csum")
    for node in nodes:
        visit(tree, node, None, None)
    assert v.csum_runs == ref_csum_runs(nodes)
    assert [p.kind for p in v.problems] == ["counter"] * sum(node.seq > 10 for node in nodes)


# ------------------------------------------------------------------ runs

@pytest.mark.parametrize("seed", SEEDS)
def test_merge_is_the_union_of_the_runs(seed):
    rng = random.Random(seed)
    runs = []
    for _ in range(rng.randrange(0, 30)):
        s = rng.randrange(0, 100)
        runs.append((s, s + rng.randrange(-3, 12)))          # empty and reversed runs take no part
    assert merge(runs) == ref_merge(runs)
    assert merge(iter(runs)) == ref_merge(runs)
    ordered = sorted(runs)
    assert merge_sorted([s for s, _ in ordered], [e for _, e in ordered]) == ref_merge(runs)


@pytest.mark.parametrize("seed", SEEDS)
def test_packed_runs_are_the_merged_extents(seed):
    rng = random.Random(seed)
    extents = [(rng.randrange(0, 500), rng.randrange(0, 12)) for _ in range(rng.randrange(0, 60))]
    extents += extents[:rng.randrange(0, len(extents) + 1)]          # snapshots repeat their parent's
    packed = array("Q", [pack(s, n) for s, n in extents])
    assert verify_cross._packed_runs(packed) == ref_merge((s, s + n) for s, n in extents)


# ------------------------------------------------------------------ the B+tree checker

def ref_check_sharing(forest, results, known):
    sharers: dict = {}
    for r in results:
        for node_id in r.reached:
            sharers.setdefault(node_id, []).append(r)
    found = []
    for node_id, checks in sharers.items():
        if len(checks) < 2 or node_id not in known:
            continue
        seq = known[node_id].seq
        for c in checks:
            rec = forest.tree(c.tree).rec
            if not rec.frozen and seq > rec.snap_seq:
                found.append((c.tree, node_id))
    return found


def test_sharing_check_names_every_writable_tree_sharing_a_node_newer_than_its_snapshot():
    f = Forest(MemoryNodeStore())
    t = f.create_tree("a")
    for i in range(2000):
        t.insert(i, i)
    f.snapshot("a", "b")
    f.clone("b", "c")
    t.insert(5000, 1)
    f.commit()
    names = ("b", "a", "c")
    known: dict = {}
    results = [check_tree(f, name, known) for name in names]
    check_sharing(f, results, known)
    assert all(r.ok for r in results), [str(p) for r in results for p in r.problems]

    # Nodes two trees reach, stamped newer than every tree's snapshot.
    newest = max(f.tree(n).rec.snap_seq for n in names)
    shared = ((results[0].reached & results[1].reached) | (results[0].reached & results[2].reached)
              | (results[1].reached & results[2].reached))
    assert shared
    for node_id in shared:
        f.node(node_id).seq = newest + 1
    known = {}
    results = [check_tree(f, name, known) for name in names]
    want = ref_check_sharing(f, results, known)
    check_sharing(f, results, known)
    got = [(r.tree, p.node_id) for r in results for p in r.problems if p.kind == "shared"]
    assert want and sorted(got) == sorted(want)
    assert {tree for tree, _ in got} <= {"a", "c"}        # never the frozen snapshot
