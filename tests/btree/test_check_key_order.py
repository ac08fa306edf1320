"""The checker's key-order test on leaves, whatever shortcut it takes.

A leaf whose n integer keys span exactly n - 1 (a run of VBAs, as in the
checksum map) is tested with one list compare against the run; the others
pairwise. Both must name the first key that is not above the one before it,
as the pairwise loop always did: held here against that loop on keys made to
fool the shortcut (permutations and repeats of a run, runs with a gap).
"""

from __future__ import annotations

import random
from array import array

import pytest

from vdisk.btree import Forest, Layout, MemoryNodeStore, check_tree


def _first_disorder(keys):
    for a in range(len(keys) - 1):
        if not keys[a] < keys[a + 1]:
            return a + 1
    return None


def _keys(rng):
    n = rng.randrange(2, 60)
    k = rng.randrange(0, 1 << 40)
    run = list(range(k, k + n))
    roll = rng.random()
    if roll < 0.25:
        return run                                      # the common case: ordered
    if roll < 0.5:
        i, j = rng.sample(range(n), 2)                  # two keys swapped: same span
        run[i], run[j] = run[j], run[i]
        return run
    if roll < 0.7:
        i = rng.randrange(1, n - 1) if n > 2 else 1     # a key repeated, the span kept by a gap
        return sorted(run[:i] + [run[i - 1]] + run[i + 1:-1] + [run[-1]])
    if roll < 0.85:
        run[-1] += rng.randrange(1, 4)                  # not a run: the pairwise test
        if rng.random() < 0.5:
            i = rng.randrange(n - 1)
            run[i], run[i + 1] = run[i + 1], run[i]
        return run
    return [k + n - 1 - i for i in range(n)]            # descending


@pytest.mark.parametrize("seed", range(200))
def test_leaf_key_order_is_named_at_the_first_key_out_of_order(seed):
    rng = random.Random(seed)
    f = Forest(MemoryNodeStore())
    t = f.create_tree("t", Layout("u64", "u64"))
    keys = _keys(rng)
    root = f.node(t.rec.root)
    root.keys = array("Q", keys)
    root.vals = array("Q", [1] * len(keys))
    t.rec.count = len(keys)
    found = [p for p in check_tree(f, "t").problems if p.kind == "key-order"]
    i = _first_disorder(keys)
    if i is None:
        assert not found
    else:
        assert len(found) == 1
        assert found[0].message == f"key {keys[i]!r} at index {i} is not above {keys[i - 1]!r}"
