"""The in-place-vs-copy rule, tested directly on node ids, seqs and bytes.

The rule (tree.py, design notes 1): a node whose seq is newer than its tree's
newest snapshot belongs to that tree alone and is changed in place; any other
node may be shared and is never changed - it is copied, and the copy's parent
is made to point at it, up to the root.
"""

from __future__ import annotations

import random

import pytest

from btree_util import (DEEP, WIDE_VALUES, KeyCodec, assert_forest_ok, build_tree, path_ids,
                        reachable, node_state)
from vdisk.btree import Forest, LmdbNodeStore, MemoryNodeStore
from vdisk.btree import format as fmt
from vdisk.errors import InvalidArgument


@pytest.fixture(params=["memory", "lmdb"])
def open_store(request, scratch):
    """A function that opens the test's store (again), closing the previous LMDB handle."""
    opened = []
    memory = MemoryNodeStore()

    def open_():
        if request.param == "memory":
            return memory
        if opened:
            opened.pop().close()
        opened.append(LmdbNodeStore(scratch / "meta"))
        return opened[-1]

    yield open_
    if opened:
        opened.pop().close()


def deep_forest(n=600, store=None):
    forest = Forest(store if store is not None else MemoryNodeStore())
    model = build_tree(forest, "main", DEEP, n)
    forest.commit()
    return forest, model


def copies_needed(forest, tree, key) -> int:
    """Nodes on the path to ``key`` that the rule must copy: those not newer than the snapshot."""
    return sum(1 for i in path_ids(tree, key) if forest.node(i).seq <= tree.snap_seq)


# ----------------------------------------------------------------- in place


def test_node_written_after_snapshot_is_changed_in_place_forever():
    forest, model = deep_forest()
    codec = KeyCodec(DEEP)
    tree = forest.tree("main")
    forest.snapshot("main", "snap")
    key = codec.key(301)

    tree.insert(key, codec.value(1))          # the first write copies the path
    ids = path_ids(tree, key)
    next_id = forest.next_node_id
    for round_ in range(3):
        for v in range(20):
            tree.insert(key, codec.value(1000 + v))
            assert path_ids(tree, key) == ids
        forest.commit()                       # committing does not make nodes shared
    assert forest.next_node_id == next_id, "a node written after the snapshot was copied again"
    assert tree.get(key) == codec.value(1019)
    assert forest.tree("snap").get(key) == model[key]


def test_first_write_after_snapshot_copies_one_path_and_second_copies_nothing():
    forest, _ = deep_forest()
    codec = KeyCodec(DEEP)
    tree = forest.tree("main")
    assert tree.height >= 3
    forest.snapshot("main", "snap")
    key = codec.key(123)
    old_path = path_ids(tree, key)

    before = forest.next_node_id
    tree.insert(key, codec.value(7))          # an update: no split can add nodes
    assert forest.next_node_id - before == tree.height
    new_path = path_ids(tree, key)
    assert not set(new_path) & set(old_path)
    assert path_ids(forest.tree("snap"), key) == old_path
    assert len(forest._dirty) == tree.height

    before = forest.next_node_id
    tree.insert(key, codec.value(8))
    assert forest.next_node_id == before
    assert path_ids(tree, key) == new_path


@pytest.mark.parametrize("seed", range(3))
def test_each_write_copies_exactly_the_shared_nodes_on_its_path(seed):
    rnd = random.Random(seed)
    forest, model = deep_forest()
    codec = KeyCodec(DEEP)
    tree = forest.tree("main")
    for round_ in range(4):
        forest.snapshot("main", f"snap{round_}")
        for _ in range(60):
            key = rnd.choice(sorted(model))
            need = copies_needed(forest, tree, key)
            before = forest.next_node_id
            tree.insert(key, codec.value(rnd.randrange(1 << 30)))   # update: no split
            assert forest.next_node_id - before == need
        if round_ % 2:
            forest.commit()


def test_rewriting_the_same_value_after_a_snapshot_copies_nothing():
    forest, model = deep_forest()
    tree = forest.tree("main")
    forest.snapshot("main", "snap")
    key, value = sorted(model.items())[200]
    before, seq = forest.next_node_id, forest.seq
    tree.insert(key, value)
    tree.insert_sorted([])
    assert tree.delete(KeyCodec(DEEP).key(10**6)) is False
    assert (forest.next_node_id, forest.seq) == (before, seq)


def test_insert_sorted_after_snapshot_copies_each_shared_node_once_under_one_seq():
    forest, model = deep_forest()
    codec = KeyCodec(DEEP)
    tree = forest.tree("main")
    forest.snapshot("main", "snap")
    run_keys = sorted(model)[100:260]          # spans many leaves, updates only: no splits
    shared = set()
    for key in run_keys:
        shared.update(i for i in path_ids(tree, key) if forest.node(i).seq <= tree.snap_seq)
    before, seq = forest.next_node_id, forest.seq
    tree.insert_sorted([(k, codec.value(5)) for k in run_keys])
    assert forest.seq == seq + 1
    assert forest.next_node_id - before == len(shared)
    for key in run_keys:
        assert all(forest.node(i).seq == seq + 1 for i in path_ids(tree, key))


# ----------------------------------------------------------------- sharing


@pytest.mark.parametrize("seed", range(2))
def test_nodes_shared_with_a_snapshot_are_never_modified(open_store, seed):
    rnd = random.Random(seed)
    store = open_store()
    forest, model = deep_forest(400, store)
    codec = KeyCodec(DEEP)
    snap = forest.snapshot("main", "snap")
    forest.commit()
    frozen = dict(model)
    nodes = reachable(forest, snap.root)
    assert len(nodes) > 40
    states = {n.id: node_state(n) for n in nodes}
    stored = {i: bytes(store.load(i)) for i in states}

    tree = forest.tree("main")
    for step in range(600):
        op = rnd.random()
        if op < 0.4:
            k, v = codec.key(rnd.randrange(800)), codec.value(rnd.randrange(1 << 20))
            tree.insert(k, v)
            model[k] = v
        elif op < 0.8:
            if model:
                k = rnd.choice(sorted(model))
                assert tree.delete(k)
                del model[k]
        else:
            start = rnd.randrange(800)
            run = [(codec.key(n), codec.value(step)) for n in range(start, start + 30, 2)]
            tree.insert_sorted(run)
            model.update(run)
        if step % 97 == 0:
            forest.commit()
        for node_id, state in states.items():
            cached = forest._cache.get(node_id)
            assert cached is None or node_state(cached) == state, f"shared node {node_id} changed"
    height = tree.height
    for k in sorted(model)[::-1]:        # empty most leaves: merges, borrows, root collapses
        if int.from_bytes(k[:4], "big") % 100:
            assert tree.delete(k)
            del model[k]
    assert tree.height < height
    forest.commit()
    assert dict(tree.items()) == model

    for node_id, state in states.items():
        assert node_state(forest.node(node_id)) == state
        assert bytes(store.load(node_id)) == stored[node_id], f"shared node {node_id} rewritten"
    reopened = Forest(open_store())
    assert dict(reopened.tree("snap").items()) == frozen
    assert_forest_ok(reopened)


def test_merges_after_a_snapshot_never_free_shared_nodes(open_store):
    """Emptying leaves right after a snapshot merges them with siblings the snapshot shares."""
    store = open_store()
    forest, model = deep_forest(400, store)
    forest.snapshot("main", "snap")
    forest.commit()
    shared = {n.id for n in reachable(forest, forest.tree("snap").root)}
    tree = forest.tree("main")
    for k in sorted(model):
        if int.from_bytes(k[:4], "big") % 7:
            assert tree.delete(k)
            del model[k]
        assert not shared & forest._freed, "a node the snapshot shares was freed"
    forest.commit()
    assert all(store.load(i) is not None for i in shared)
    forest = Forest(open_store())
    assert dict(forest.tree("main").items()) == model
    assert len(forest.tree("snap")) == 400 and len(list(forest.tree("snap").items())) == 400
    assert_forest_ok(forest)


def test_snapshot_taken_before_reopen_still_forces_copies(open_store):
    store = open_store()
    forest, model = deep_forest(300, store)
    forest.snapshot("main", "snap")
    forest.commit()
    forest = Forest(open_store())
    tree = forest.tree("main")
    codec = KeyCodec(DEEP)
    key = codec.key(150)
    old = path_ids(tree, key)
    before = forest.next_node_id
    tree.insert(key, codec.value(99))
    assert forest.next_node_id - before == tree.height
    assert not set(path_ids(tree, key)) & set(old)
    assert forest.tree("snap").get(key) == model[key]


def test_clone_and_source_never_see_each_others_writes():
    forest, model = deep_forest(300)
    codec = KeyCodec(DEEP)
    forest.snapshot("main", "snap")
    forest.clone("snap", "clone")
    main, clone = forest.tree("main"), forest.tree("clone")
    for n in range(0, 300, 3):
        main.insert(codec.key(n), codec.value(1))
        clone.delete(codec.key(n))
    assert dict(forest.tree("snap").items()) == model
    assert dict(main.items()) == {**model, **{codec.key(n): codec.value(1) for n in range(0, 300, 3)}}
    assert dict(clone.items()) == {k: v for k, v in model.items() if k not in
                                   {codec.key(n) for n in range(0, 300, 3)}}
    assert_forest_ok(forest)


# ----------------------------------------------------------------- seq order


def _walk_seqs(forest, tree):
    """Yield (parent seq or None, node) for every node of the tree."""
    stack = [(None, tree.root)]
    while stack:
        parent_seq, node_id = stack.pop()
        node = forest.node(node_id)
        yield parent_seq, node
        if not node.leaf:
            stack.extend((node.seq, c) for c in node.vals)


@pytest.mark.parametrize("seed", range(3))
def test_child_seq_never_exceeds_parent_and_shared_nodes_are_older_than_every_sharer(seed):
    rnd = random.Random(seed)
    forest, _ = deep_forest(300)
    codec = KeyCodec(DEEP)
    writable, snaps = ["main"], []
    for step in range(400):
        name = rnd.choice(writable)
        tree = forest.tree(name)
        n = rnd.randrange(600)
        if rnd.random() < 0.55:
            tree.insert(codec.key(n), codec.value(step))
        else:
            tree.delete(codec.key(n))
        if step % 60 == 0:
            snaps.append(f"snap{step}")
            forest.snapshot(name, snaps[-1])
        if step % 90 == 45:
            forest.clone(snaps[-1], f"clone{step}")
            writable.append(f"clone{step}")
        if step % 70 == 0:
            forest.commit()

    owners: dict[int, list] = {}
    for name in forest.tree_names():
        tree = forest.tree(name)
        for parent_seq, node in _walk_seqs(forest, tree):
            assert parent_seq is None or node.seq <= parent_seq, f"{name}: node {node.id}"
            if tree.frozen:
                assert node.seq <= tree.snap_seq, f"snapshot {name} reaches newer node {node.id}"
            owners.setdefault(node.id, []).append(tree)
    for node_id, trees in owners.items():
        if len(trees) > 1:
            for tree in trees:
                seq = forest.node(node_id).seq
                assert tree.frozen or seq <= tree.snap_seq, \
                    f"node {node_id} is shared but {tree.name} would change it in place"


# ----------------------------------------------------------------- O(1)


def test_snapshot_and_clone_create_no_nodes():
    forest, model = deep_forest(600)
    tree = forest.tree("main")
    tree.insert(KeyCodec(DEEP).key(5000), KeyCodec(DEEP).value(1))   # some dirty state
    stored = set(forest.store.nodes)
    before = (forest.next_node_id, set(forest._dirty), set(forest._freed), len(forest._cache))
    snap = forest.snapshot("main", "snap")
    clone = forest.clone("snap", "clone")
    assert (forest.next_node_id, set(forest._dirty), set(forest._freed), len(forest._cache)) == before
    assert snap.root == clone.root == tree.root
    forest.commit()
    assert set(forest.store.nodes) == stored | before[1]
    assert fmt.decode_tree_record("snap", forest.store.meta_get(b"tree/snap")).frozen


def test_clone_of_a_writable_tree_is_refused():
    """Two writable trees sharing nodes would both copy them and orphan the originals."""
    forest = Forest(MemoryNodeStore())
    build_tree(forest, "main", WIDE_VALUES, 100)
    forest.commit()
    snap_seq = forest.tree("main").snap_seq
    with pytest.raises(InvalidArgument, match="clone needs a snapshot; 'main' is writable"):
        forest.clone("main", "clone")
    assert forest.tree_names() == ["main"] and forest.tree("main").snap_seq == snap_seq
    assert not forest.has_changes


def test_diverging_clone_and_source_leave_no_unreachable_nodes():
    forest = Forest(MemoryNodeStore())
    build_tree(forest, "main", WIDE_VALUES, 100)
    forest.snapshot("main", "snap")
    forest.clone("snap", "clone")
    codec = KeyCodec(WIDE_VALUES)
    forest.tree("main").insert(codec.key(5), codec.value(0))
    forest.tree("clone").insert(codec.key(5), codec.value(1))
    forest.commit()
    assert_forest_ok(forest)
