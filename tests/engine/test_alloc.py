"""The allocator (vdisk/alloc.py) alone, on a free tree in memory.

It takes free extents in batches (the spare) and folds a commit's frees into
the free tree one by one or in one merged pass. Whatever the path, the
outcome must be the same: allocation in next-fit order from the cursor, the
spare counted free and back in the tree at the commit, the tree holding
every free block once with touching extents joined, the extents worth
punching returned, and a double free refused.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vdisk.alloc as alloc_mod
from vdisk.alloc import Allocator
from vdisk.btree import Forest, Layout, MemoryNodeStore
from vdisk.errors import IntegrityError

END = 100_000


def allocator(extents, end=END):
    forest = Forest(MemoryNodeStore())
    tree = forest.create_tree("free", Layout("u64", "u64"))
    tree.insert_sorted(sorted(extents))
    forest.commit()
    return Allocator(tree, end)


def blocks(extents):
    out = set()
    for p, n in extents:
        assert n > 0
        new = set(range(p, p + n))
        assert not out & new, "a block is in two extents"
        out |= new
    return out


def tree_extents(a):
    return list(a.free.items())


def assert_joined(extents):
    for (p, n), (q, _) in zip(extents, extents[1:]):
        assert p + n < q, f"extents {p}+{n} and {q} touch or overlap"


@pytest.fixture(params=["one by one", "merged"])
def path(request, monkeypatch):
    """Run the test with prepare_commit forced down one path."""
    monkeypatch.setattr(alloc_mod, "MERGE_RATIO", 0 if request.param == "one by one" else 10**9)
    return request.param


def scattered(n, seed=1, span=4):
    rnd = random.Random(seed)
    return [(p, rnd.randrange(1, span)) for p in range(10, 10 + n * 2 * span, 2 * span)]


def test_allocation_is_next_fit_in_tree_order_and_wraps(monkeypatch):
    monkeypatch.setattr(alloc_mod, "CONTIGUOUS_BLOCKS", 1 << 40)    # the small writes' path
    free = scattered(600)
    a = allocator(free)
    a._cursor = free[300][0]
    got = a.allocate(sum(n for _, n in free))
    want = free[300:] + free[:300]
    assert got == want                        # one piece per extent, from the cursor on, then wrapping
    assert a.allocate(3) == [(END, 3)]        # then the PBA space grows
    assert a.end == END + alloc_mod.GROW_BLOCKS


def test_the_spare_is_counted_free_and_listed_and_goes_back_at_commit(path):
    free = scattered(400)
    a = allocator(free)
    total = sum(n for _, n in free)
    got = a.allocate(5)
    assert a.free_blocks() == total - 5
    held = a.held()
    assert len(held) > 1                       # a batch was taken from the tree
    assert blocks(held) | blocks(tree_extents(a)) | blocks(got) == blocks(free)
    assert not blocks(held) & blocks(tree_extents(a))
    assert a.prepare_commit() == []            # nothing freed: nothing to punch
    assert a.held() == []
    assert blocks(tree_extents(a)) == blocks(free) - blocks(got)
    assert a.free_blocks() == total - 5
    last = got[-1][0] + got[-1][1]
    assert a.allocate(1)[0][0] == min(b for b in blocks(free) if b >= last)   # next-fit resumes


def test_frees_join_their_neighbours_and_come_back_to_punch(path):
    a = allocator([(10, 5), (20, 5), (40, 1)])
    a.allocate(2)                               # (10, 2): the rest of (10, 5) is held
    a.release(15, 5)                            # joins (12, 3) before it and (20, 5) after it
    a.release(41, 2)
    a.release(1000, 50)
    out = a.prepare_commit()
    assert tree_extents(a) == [(12, 13), (40, 3), (1000, 50)]
    assert out == [(12, 13), (40, 3), (1000, 50)]


def test_an_earlier_run_grown_by_a_later_one_is_returned_once(path):
    a = allocator([(11, 1), (13, 1)])
    a.release(10, 1)
    a.release(12, 1)
    a.release(14, 1)
    assert a.prepare_commit() == [(10, 5)]
    assert tree_extents(a) == [(10, 5)]


@pytest.mark.parametrize("case", ["inside a free extent", "starts a free extent", "covers a free extent's start",
                                  "twice pending", "inside the spare", "inside the held rest"])
def test_a_double_free_is_refused(path, case):
    a = allocator([(100, 10), (200, 1), (300, 5)] + [(1000 + 2 * i, 1) for i in range(50)])
    if case == "inside the spare":
        a._cursor = 1000
        assert a.allocate(1) == [(1000, 1)]      # takes a batch: (1002, 1), ... are spare
        a.release(1010, 1)
    elif case == "inside the held rest":
        a._cursor = 300
        assert a.allocate(1) == [(300, 1)]       # (301, 4) is the rest of the current extent
        a.release(302, 1)
    else:
        pba, n = {"inside a free extent": (105, 1), "starts a free extent": (200, 1),
                  "covers a free extent's start": (298, 4), "twice pending": (500, 2)}[case]
        a.release(pba, n)
        if case == "twice pending":
            a.release(501, 1)
    with pytest.raises(IntegrityError, match="freed twice"):
        a.prepare_commit()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), n_free=st.integers(0, 300), n_alloc=st.integers(0, 400),
       n_commits=st.integers(1, 4), merged=st.sampled_from([None, True, False]))
def test_any_history_keeps_every_block_once_and_joined(seed, n_free, n_alloc, n_commits, merged):
    """Random free trees, allocations, frees of allocated blocks and commits against a set model."""
    rnd = random.Random(seed)
    saved = alloc_mod.MERGE_RATIO
    if merged is not None:
        alloc_mod.MERGE_RATIO = 10**9 if merged else 0
    try:
        end = 4000
        cand = sorted(rnd.sample(range(0, end - 2, 3), min(n_free, end // 3 - 1)))
        free = [(p, rnd.choice((1, 1, 1, 2))) for p in cand]
        a = allocator(free, end)
        model_free = blocks(free)
        used = set(range(end)) - model_free
        for _ in range(n_commits):
            freed = set()
            for _ in range(n_alloc // n_commits):
                if rnd.random() < 0.6:
                    pieces = a.allocate(rnd.choice((1, 1, 1, 2, 7)))
                    model_free |= set(range(end, a.end))    # the PBA space grew
                    end = a.end
                    for p, n in pieces:
                        got = set(range(p, p + n))
                        assert got <= model_free, "allocated a block that is not free"
                        used |= got
                        model_free -= got
                elif used:
                    b = rnd.choice(sorted(used))
                    run = 1
                    while b + run in used and run < 4 and rnd.random() < 0.5:
                        run += 1
                    a.release(b, run)
                    used -= set(range(b, b + run))
                    freed |= set(range(b, b + run))
                assert a.free_blocks() == len(model_free)
            model_free |= freed
            out = a.prepare_commit()
            ext = tree_extents(a)
            assert blocks(ext) == model_free
            assert_joined(ext)
            assert a.free_blocks() == len(model_free)
            # What comes back to punch: exactly the tree's extents holding a block freed now.
            assert out == [(p, n) for p, n in ext if freed & set(range(p, p + n))]
    finally:
        alloc_mod.MERGE_RATIO = saved


def test_a_large_write_gets_one_piece_and_leaves_the_holes_to_small_ones():
    holes = scattered(200)                               # extents of 1-3 blocks
    big = (10 + 200 * 8 + 100, 64)
    a = allocator(holes + [big])
    n = alloc_mod.CONTIGUOUS_BLOCKS
    assert a.allocate(n) == [(big[0], n)]                # the long extent, not the holes
    assert a.allocate(64 - n) == [(big[0] + n, 64 - n)]  # the rest of it next
    assert a.allocate(48) == [(END, 48)]                 # none left that long: new space
    got = []
    for _ in range(sum(n for _, n in holes)):            # small writes take the holes, all of them
        got.extend(a.allocate(1))
    assert all(p < END for p, _ in got)
    assert sorted(p for p, _ in got) == sorted(p + i for p, n in holes for i in range(n))
