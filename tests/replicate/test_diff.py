"""snapshots/diff.py and btree/diff.py against brute force: every pair of
snapshots (and the running point, and "-") compared block by block, by
mapping and by contents; and the walk's cost following the change."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdisk import Disk
from vdisk.btree import Forest, Layout, MemoryNodeStore
from vdisk.btree.diff import diff_trees
from vdisk.errors import NotFound
from vdisk.snapshots.diff import EVERYTHING, changed_extents, diff

from .util import block_map, changed_blocks, contents, scratch_dir

BS = 512
BLOCKS = 96


def check_pair(d, a, b):
    """diff(a, b) is exactly the blocks that map differently, and covers every changed byte."""
    got = changed_blocks(diff(d, a, b).changes, BS)
    ma = {} if a == EVERYTHING else block_map(d, a)
    mb = block_map(d, b)
    size_b = d.size if b is None else d.snapshot_record(b).size
    want = {blk: blk in mb for blk in range(size_b // BS) if ma.get(blk) != mb.get(blk)}
    assert got == want, (a, b)
    # Past FROM's size (a grown disk) FROM reads as a hole.
    ca = bytes(size_b) if a == EVERYTHING else contents(d, a).ljust(size_b, b"\0")[:size_b]
    cb = contents(d, b)
    for blk in range(size_b // BS):
        if ca[blk * BS:(blk + 1) * BS] != cb[blk * BS:(blk + 1) * BS]:
            assert blk in got, f"block {blk} differs from {a!r} to {b!r} but is not reported"


ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, BLOCKS - 1), st.integers(1, 12), st.integers(1, 255)),
    st.tuples(st.just("zero"), st.integers(0, BLOCKS - 1), st.integers(1, 20), st.just(0)),
    st.tuples(st.just("snap"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("revert"), st.integers(0, 7), st.just(0), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 7), st.just(0), st.just(0)),
    st.tuples(st.just("grow"), st.integers(1, 16), st.just(0), st.just(0)),
), max_size=25)


@settings(max_examples=40)
@given(ops)
def test_diff_of_every_pair_matches_brute_force(ops):
    top = scratch_dir()
    try:
        _run_and_check(os.path.join(top, "d"), ops)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run_and_check(path, ops):
    with Disk.create(path, BLOCKS * BS, BS) as d:
        made = 0
        for op, x, n, byte in ops:
            names = [s.name for s in d.snapshots(exclusive=False)]
            blocks = d.size // BS
            if op == "write":
                x %= blocks
                n = min(n, blocks - x)
                d.write(x * BS, bytes([byte]) * (n * BS))
            elif op == "zero":
                x %= blocks
                d.zero(x * BS, min(n, blocks - x) * BS)
            elif op == "snap":
                d.create_snapshot(f"s{made}")
                made += 1
            elif op == "grow":
                d.resize(d.size + x * BS)
            elif names and op == "revert":
                d.revert(names[x % len(names)])
            elif names and op == "delete":
                d.delete_snapshot(names[x % len(names)])
        names = [s.name for s in d.snapshots(exclusive=False)]
        points = names + [None]
        for a in points + [EVERYTHING]:
            for b in points:
                check_pair(d, a, b)


def test_a_small_change_reads_few_nodes_of_a_big_tree(tmp_path):
    """20,000 extents (two levels, 80 full leaves: the one-block writes reach
    the LBA tree in one sorted batch); one block changed: the walk reads the
    changed path of each tree, not the tree."""
    with Disk.create(tmp_path / "d", 40_000 * BS, BS) as d:
        for blk in range(0, 40_000, 2):          # every other block: one extent each
            d.write(blk * BS, b"x" * BS)
        d.create_snapshot("a")
        d.write(20_000 * BS, b"y" * BS)
        d.create_snapshot("b")
        height = d.forest.tree("snap/b").height
        assert height >= 2
        r = diff(d, "a", "b")
        assert r.changes == [(20_000 * BS, BS, True)]
        assert r.nodes_read <= 2 * height + 2, r.nodes_read
        assert r.shared_skipped > 0
        full = diff(d, EVERYTHING, "b")
        assert full.nodes_read >= 20 * r.nodes_read
        assert full.data_bytes == 20_000 * BS
        check_pair(d, "a", "b")
        check_pair(d, "b", "a")


def test_newer_from_and_holes(tmp_path):
    with Disk.create(tmp_path / "d", 64 * BS, BS) as d:
        d.write(0, b"a" * 8 * BS)
        d.create_snapshot("old")
        d.zero(2 * BS, 2 * BS)
        d.write(10 * BS, b"b" * BS)
        d.create_snapshot("new")
        assert list(changed_extents(d, "old", "new")) == [(2 * BS, 2 * BS, False), (10 * BS, BS, True)]
        # Backwards: what "old" holds that "new" does not.
        assert list(changed_extents(d, "new", "old")) == [(2 * BS, 2 * BS, True), (10 * BS, BS, False)]
        assert list(changed_extents(d, "new", None)) == []
        assert list(changed_extents(d, EVERYTHING, "old")) == [(0, 8 * BS, True)]


def test_unknown_snapshot_is_not_found(tmp_path):
    with Disk.create(tmp_path / "d", 64 * BS, BS) as d:
        with pytest.raises(NotFound):
            diff(d, "nope", None)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers(0, 10**6)), max_size=400),
       st.integers(0, 2**32))
def test_diff_trees_finds_every_differing_entry(changes, seed):
    """The generic walk on a u64 tree and a snapshot of it changed at random
    (inserts and deletes, so nodes split and merge): the entries it returns,
    minus the ones equal on both sides, are exactly the symmetric difference."""
    f = Forest(MemoryNodeStore(), cache_nodes=100_000)
    t = f.create_tree("t", Layout())
    rng = random.Random(seed)
    for k in rng.sample(range(3000), 1500):
        t.insert(k, k)
    f.snapshot("t", "s")
    for delete, k, v in changes:
        if delete:
            t.delete(k)
        else:
            t.insert(k, v)
    s = f.tree("s")
    r = diff_trees(s, t)
    a, b = set(r.a), set(r.b)
    assert a - b == set(s.items()) - set(t.items())
    assert b - a == set(t.items()) - set(s.items())
    assert [k for k, _ in r.a] == sorted(k for k, _ in r.a)
    if not changes:
        assert r.nodes_read == 0 and r.shared_skipped == 1


@settings(max_examples=15)
@given(st.lists(st.tuples(st.integers(0, 2999), st.integers(1, 40), st.booleans()), min_size=1, max_size=30))
def test_diff_of_fragmented_trees_with_several_leaves(changes):
    """1,500 extents (several leaves, two levels) and random writes and
    zeros on top: leaves only partly changed, split and merged."""
    top = scratch_dir()
    try:
        with Disk.create(os.path.join(top, "d"), 3000 * BS, BS) as d:
            for blk in range(0, 3000, 2):
                d.write(blk * BS, bytes([blk % 251 + 1]) * BS)
            d.create_snapshot("a")
            for blk, n, zero in changes:
                n = min(n, 3000 - blk)
                if zero:
                    d.zero(blk * BS, n * BS)
                else:
                    d.write(blk * BS, b"\x07" * (n * BS))
            d.create_snapshot("b")
            assert d.forest.tree("snap/a").height >= 2
            check_pair(d, "a", "b")
            check_pair(d, "b", "a")
            check_pair(d, "a", None)
    finally:
        shutil.rmtree(top, ignore_errors=True)
