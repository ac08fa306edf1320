"""BTree.delete_sorted: many keys out in one operation, leaf by leaf.

The state machines (test_stateful.py) drive it against a model among every
other change; these are the edges: emptying leaves and the whole tree, keys
that are absent, bad input, one seq for the whole operation, and the seq
rule after a snapshot (shared nodes are copied, never changed).
"""

from __future__ import annotations

import pytest

from btree_util import DEEP, U64, WIDE_VALUES, KeyCodec, assert_forest_ok, build_tree, node_state, reachable
from vdisk.btree import Forest, MemoryNodeStore
from vdisk.errors import InvalidArgument, ReadOnly


def forest_with(layout, n, commit=True):
    forest = Forest(MemoryNodeStore())
    model = build_tree(forest, "main", layout, n)
    if commit:
        forest.commit()
    return forest, model


def check(forest, tree, model):
    assert len(tree) == len(model)
    assert list(tree.items()) == sorted(model.items())
    assert_forest_ok(forest)


@pytest.mark.parametrize("layout", [DEEP, WIDE_VALUES, U64], ids=["deep", "wide", "u64"])
def test_deleting_every_key_empties_the_tree(layout):
    forest, model = forest_with(layout, 900)
    tree = forest.tree("main")
    assert tree.height >= 2
    assert tree.delete_sorted(sorted(model)) == len(model)
    assert len(tree) == 0 and list(tree.items()) == [] and tree.height == 1
    assert_forest_ok(forest)
    forest.commit()
    tree.insert_sorted([(k, model[k]) for k in sorted(model)[:50]])
    check(forest, tree, {k: model[k] for k in sorted(model)[:50]})


@pytest.mark.parametrize("layout", [DEEP, WIDE_VALUES, U64], ids=["deep", "wide", "u64"])
@pytest.mark.parametrize("pattern", ["front", "back", "middle", "every_other", "every_third", "sparse"])
def test_patterns_of_deletion_keep_the_tree_valid(layout, pattern):
    forest, model = forest_with(layout, 700)
    tree = forest.tree("main")
    ks = sorted(model)
    doomed = {"front": ks[:400], "back": ks[300:], "middle": ks[100:600], "every_other": ks[::2],
              "every_third": ks[1::3], "sparse": ks[::37]}[pattern]
    assert tree.delete_sorted(doomed) == len(doomed)
    for k in doomed:
        del model[k]
    check(forest, tree, model)


def test_absent_keys_are_skipped_and_counted_out():
    forest, model = forest_with(U64, 600)
    tree = forest.tree("main")
    for k in range(0, 600, 2):
        tree.delete(k)
        del model[k]
    forest.commit()
    seq = forest.seq
    # Only absent keys (below, between and above the tree's): no change, no seq.
    assert tree.delete_sorted([-0] + list(range(2, 600, 50)) + [10_000, 10**9]) == 0
    assert forest.seq == seq and not forest._dirty
    check(forest, tree, model)
    run = list(range(0, 700))                 # half present, half absent
    assert tree.delete_sorted(run) == 300
    assert forest.seq == seq + 1              # one operation for the whole run
    assert len(tree) == 0
    assert_forest_ok(forest)


def test_empty_run_and_empty_tree():
    forest = Forest(MemoryNodeStore())
    tree = forest.create_tree("main", U64)
    assert tree.delete_sorted([]) == 0
    assert tree.delete_sorted([1, 2, 3]) == 0
    assert len(tree) == 0


def test_unsorted_or_bad_keys_are_refused_without_changing_anything():
    forest, model = forest_with(WIDE_VALUES, 200)
    tree = forest.tree("main")
    codec = KeyCodec(WIDE_VALUES)
    before = [node_state(n) for n in reachable(forest, tree.root)]
    for bad in ([codec.key(5), codec.key(3)], [codec.key(5), codec.key(5)], [codec.key(1), b"x", 3]):
        with pytest.raises(InvalidArgument):
            tree.delete_sorted(bad)
    assert [node_state(n) for n in reachable(forest, tree.root)] == before
    check(forest, tree, model)


def test_a_snapshot_keeps_its_entries_and_its_nodes():
    forest, model = forest_with(DEEP, 600)
    tree = forest.tree("main")
    snap = forest.snapshot("main", "snap")
    shared = {n.id: node_state(n) for n in reachable(forest, snap.root)}
    doomed = sorted(model)[50:550:3] + sorted(model)[560:]
    assert tree.delete_sorted(doomed) == len(doomed)
    # Every node the snapshot reaches is unchanged: the deletion copied them.
    assert {n.id: node_state(n) for n in reachable(forest, snap.root)} == shared
    assert list(snap.items()) == sorted(model.items())
    for k in doomed:
        del model[k]
    check(forest, tree, model)
    forest.commit()
    assert list(forest.tree("snap").items()) == sorted(
        {**model, **{k: KeyCodec(DEEP).value(int.from_bytes(k[:4], "big")) for k in doomed}}.items())
    assert_forest_ok(forest)


def test_a_second_delete_after_the_snapshot_changes_its_own_copies_in_place():
    forest, model = forest_with(DEEP, 600)
    tree = forest.tree("main")
    forest.snapshot("main", "snap")
    ks = sorted(model)
    tree.delete_sorted(ks[100:110])
    next_id = forest.next_node_id
    tree.delete_sorted(ks[110:112])           # same leaf region: the copies are this tree's
    assert forest.next_node_id == next_id
    for k in ks[100:112]:
        del model[k]
    check(forest, tree, model)


def test_a_snapshot_refuses_it():
    forest, model = forest_with(U64, 50)
    snap = forest.snapshot("main", "snap")
    with pytest.raises(ReadOnly):
        snap.delete_sorted([1])


def test_a_small_node_cache_never_loses_the_deletions():
    forest = Forest(MemoryNodeStore(), cache_nodes=6)
    model = build_tree(forest, "main", DEEP, 500)
    forest.commit()
    tree = forest.tree("main")
    doomed = sorted(model)[::2]
    assert tree.delete_sorted(doomed) == len(doomed)
    for k in doomed:
        del model[k]
    forest.commit()
    check(forest, tree, model)
