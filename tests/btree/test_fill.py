"""How full leaves stay: a tree that grows at its right edge (keys born in
ascending order, as VBAs are) splits its rightmost node into full parts and
a minimal last one (btree/writes.py ``_split_parts``), so it does not leave
half-full leaves behind for good; any other split stays balanced."""

from __future__ import annotations

import random

import pytest

from btree_util import assert_forest_ok, reachable
from vdisk.btree import Forest, Layout, MemoryNodeStore

CSUM = Layout("u64", "bytes:16")


def _leaves(forest, tree):
    return [n for n in reachable(forest, tree.rec.root) if n.leaf]


def _fill(forest, tree) -> float:
    leaves = _leaves(forest, tree)
    return sum(len(n.keys) for n in leaves) / (len(leaves) * tree.leaf_cap)


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_ascending_keys_leave_full_leaves(batch):
    f = Forest(MemoryNodeStore())
    t = f.create_tree("csum", CSUM)
    keys = list(range(20_000))
    for i in range(0, len(keys), batch):
        run = keys[i:i + batch]
        if batch == 1:
            t.insert(run[0], bytes(16))
        else:
            t.insert_sorted([(k, bytes(16)) for k in run])
    assert list(t.items()) == [(k, bytes(16)) for k in keys]
    # Halves would leave ~50% (one at a time) to ~60%; each left part stays
    # at least cap - minimum full, the last leaf at least the minimum.
    assert _fill(f, t) >= 0.74, _fill(f, t)
    assert_forest_ok(f)


def test_random_inserts_stay_balanced_and_valid():
    f = Forest(MemoryNodeStore())
    t = f.create_tree("m", Layout("u64", "u64"))
    rng = random.Random(5)
    keys = rng.sample(range(10 ** 6), 20_000)
    for k in keys:
        t.insert(k, k)
    assert list(t.items()) == sorted((k, k) for k in keys)
    fill = _fill(f, t)
    assert 0.55 <= fill <= 0.9, fill
    # Deleting from the full-left leaves rebalances as before.
    for k in keys[::2]:
        assert t.delete(k)
    assert list(t.items()) == sorted((k, k) for k in keys[1::2])
    assert_forest_ok(f)
