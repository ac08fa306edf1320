"""The in-place fast path of ``BTree.insert`` and the checks on entries.

An insert whose leaf and ancestors are all newer than the tree's newest
snapshot, and whose leaf does not split, changes the leaf in place and only
stamps the path with the operation's seq. These tests pin what that path must
keep: nothing shared is ever changed, no child is newer than its parent, and
an entry the layout cannot hold changes nothing at all.
"""

from __future__ import annotations

import random

import pytest

from btree_util import DEEP, U64, WIDE_VALUES, KeyCodec, assert_forest_ok, build_tree, node_state, path_ids, reachable
from vdisk.btree import Forest, Layout, LmdbNodeStore, MemoryNodeStore
from vdisk.btree import format as fmt
from vdisk.btree.packed import PackedBytes
from vdisk.errors import InvalidArgument


def _forest(layout, n):
    forest = Forest(MemoryNodeStore())
    model = build_tree(forest, "main", layout, n)
    forest.commit()
    return forest, model


def _absent_key_with_room(tree, model, codec, limit):
    """A key not in the tree whose leaf has room for it (so the insert does not split)."""
    for n in range(limit):
        k = codec.key(n)
        if k not in model and len(tree._descend(k)[1].keys) < tree.leaf_cap:
            return k
    raise AssertionError("every leaf is full")


@pytest.mark.parametrize("layout", [U64, DEEP], ids=["u64", "deep"])
def test_exclusive_insert_copies_nothing_and_stamps_the_whole_path(layout):
    codec = KeyCodec(layout)
    forest, model = _forest(layout, 1200 if layout is U64 else 300)
    tree = forest.tree("main")
    assert tree.height >= 2
    # Thin out the keys so that leaves have room for new ones.
    for n in range(0, 1200, 3):
        if codec.key(n) in model:
            assert tree.delete(codec.key(n))
            del model[codec.key(n)]
    forest.commit()
    for round_ in range(20):
        key = _absent_key_with_room(tree, model, codec, 1200)
        ids, before = path_ids(tree, key), forest.next_node_id
        tree.insert(key, codec.value(round_))
        model[key] = codec.value(round_)
        assert forest.next_node_id == before and path_ids(tree, key) == ids
        for node_id in ids:
            assert forest.node(node_id).seq == forest.seq, "a node on the path kept an older seq"
            assert node_id in forest._dirty
    forest.commit()
    assert dict(tree.items()) == model
    assert_forest_ok(forest)


def test_a_leaf_shared_with_a_snapshot_is_copied_even_when_it_has_room():
    codec = KeyCodec(U64)
    forest, model = _forest(U64, 1200)
    tree = forest.tree("main")
    for n in range(0, 1200, 2):
        assert tree.delete(codec.key(n))
        del model[codec.key(n)]
    forest.commit()
    snap = forest.snapshot("main", "snap")
    forest.commit()
    shared = {n.id: node_state(n) for n in reachable(forest, snap.root)}
    stored = {i: bytes(forest.store.load(i)) for i in shared}

    for n in range(0, 1200, 2):       # new keys into leaves that all have room
        tree.insert(codec.key(n), codec.value(n + 7))
        model[codec.key(n)] = codec.value(n + 7)
        assert not set(path_ids(tree, codec.key(n))) & set(shared)
    frozen = {k: v for k, v in model.items() if k % 2}
    for k in list(frozen)[::5]:       # and updates of existing ones
        tree.insert(k, model[k] + 1)
        model[k] += 1
    forest.commit()
    for node_id, state in shared.items():
        assert node_state(forest.node(node_id)) == state, f"shared node {node_id} changed in memory"
        assert bytes(forest.store.load(node_id)) == stored[node_id], f"shared node {node_id} rewritten"
    assert dict(snap.items()) == frozen
    assert dict(tree.items()) == model
    assert_forest_ok(forest)


def test_an_ancestor_not_newer_than_the_snapshot_sends_the_write_down_the_copying_path():
    """The fast path checks every node on the path, not only the leaf."""
    codec = KeyCodec(U64)
    forest, model = _forest(U64, 1200)
    tree = forest.tree("main")
    forest.snapshot("main", "snap")
    key = codec.key(5)
    tree.insert(key, 1)                   # now the whole path is the tree's own
    path, leaf = tree._descend(key)
    root = path[0][0]
    root.seq = tree.snap_seq              # as if the root were still shared
    before = forest.next_node_id
    tree.insert(key, 2)
    assert forest.next_node_id == before + 1, "the root was changed in place"
    assert tree.root != root.id and tree.get(key) == 2
    assert leaf.id in path_ids(tree, key)


def test_bad_u64_entries_are_refused_and_change_nothing():
    forest, model = _forest(U64, 700)
    tree = forest.tree("main")
    count, seq = len(tree), forest.seq
    for key, value in [(-1, 5), (2**64, 5), (5, -1), (5, 2**64), (10**6, "x"), (10**6, 1.5), (3, b"x")]:
        with pytest.raises(InvalidArgument, match="bad B\\+tree entry"):
            tree.insert(key, value)
    for run in ([(1, 1), (2, -1)], [(10**6, 1), (2**64, 1)], [(10**6, 1), (10**6 + 1, None)]):
        with pytest.raises(InvalidArgument, match="bad B\\+tree entry"):
            tree.insert_sorted(run)
    assert len(tree) == count and dict(tree.items()) == model
    assert forest.seq - seq <= 7          # only the refused single inserts took a seq
    forest.commit()
    reopened = Forest(forest.store)
    assert dict(reopened.tree("main").items()) == model
    assert_forest_ok(reopened)


def test_bytes_fields_must_have_their_width_and_are_copied_in():
    layout = Layout("bytes:4", "bytes:3")
    forest = Forest(MemoryNodeStore())
    tree = forest.create_tree("t", layout)
    for key, value, what in [(b"abc", b"xyz", "key must be 4 bytes, got 3"),
                             (b"abcd", b"wxyz", "value must be 3 bytes, got 4"),
                             (b"abcd", 7, "value must be 3 bytes, got int"),
                             ("abcd", b"xyz", "key must be 4 bytes, got str")]:
        with pytest.raises(InvalidArgument, match=what):
            tree.insert(key, value)
        with pytest.raises(InvalidArgument, match=what):
            tree.insert_sorted([(b"\0\0\0\0", b"ok!"), (key, value)] if key != b"abcd" or value != 7
                               else [(key, value)])
    assert len(tree) == 0
    buf = bytearray(b"xyz")
    tree.insert(bytearray(b"abcd"), buf)
    buf[0] = ord("Q")                     # the caller's buffer changes later
    forest.commit()
    assert tree.get(b"abcd") == b"xyz" and type(tree.get(b"abcd")) is bytes
    assert list(Forest(forest.store).tree("t").items()) == [(b"abcd", b"xyz")]


@pytest.mark.parametrize("store_kind", ["memory", "lmdb"])
def test_a_tiny_node_cache_never_loses_an_in_place_write(store_kind, scratch):
    """Descending may evict a clean node above; the in-place path must put it back."""
    store = MemoryNodeStore() if store_kind == "memory" else LmdbNodeStore(scratch / "meta")
    try:
        forest = Forest(store, cache_nodes=3)
        tree = forest.create_tree("main", U64)
        rnd = random.Random(7)
        model = {}
        for step in range(4000):
            k = rnd.randrange(3000)
            if rnd.random() < 0.2 and model:
                k = rnd.choice(list(model))
                assert tree.delete(k)
                del model[k]
            else:
                tree.insert(k, step)
                model[k] = step
            if step % 250 == 0:
                forest.commit()
        forest.commit()
        assert tree.height >= 2
        reopened = Forest(store)
        assert list(reopened.tree("main").items()) == sorted(model.items())
        assert_forest_ok(reopened)
    finally:
        store.close()


def _assert_packed_in_step(forest):
    # Every change keeps a leaf's bytes values packed at the layout's width,
    # one per key: what a commit writes as it is.
    for node in forest._cache.values():
        if node.leaf and node.layout.value_type[0] == fmt.T_BYTES:
            assert type(node.vals) is PackedBytes, f"node {node.id}: {type(node.vals).__name__}"
            assert node.vals.width == node.layout.value_type[1], f"node {node.id}"
            assert len(node.vals.buf) == len(node.keys) * node.vals.width, f"node {node.id} values drifted"


@pytest.mark.parametrize("seed", range(3))
def test_packed_values_follow_every_kind_of_change(seed):
    """Splits, merges, borrows, bulk runs, deletes and copies after a snapshot."""
    layout = WIDE_VALUES                  # 19 entries per leaf: every op reshapes leaves
    codec = KeyCodec(layout)
    rnd = random.Random(seed)
    forest, model = _forest(layout, 400)
    tree = forest.tree("main")
    for step in range(1500):
        r = rnd.random()
        if r < 0.3:
            k, v = codec.key(rnd.randrange(600)), codec.value(step)
            tree.insert(k, v)
            model[k] = v
        elif r < 0.6 and model:
            # Runs of deletes empty leaves: merges and borrows.
            first = rnd.randrange(len(model))
            for k in sorted(model)[first:first + rnd.randint(1, 25)]:
                assert tree.delete(k)
                del model[k]
        elif r < 0.7:
            start = rnd.randrange(600)
            run = [(codec.key(n), codec.value(step + n)) for n in range(start, start + rnd.randint(1, 40))]
            tree.insert_sorted(run)
            model.update(run)
        elif r < 0.75:
            forest.snapshot("main", f"s{step}")
        elif r < 0.85:
            forest.commit()
        _assert_packed_in_step(forest)
    forest.commit()
    assert list(Forest(forest.store).tree("main").items()) == sorted(model.items())
    assert_forest_ok(forest)
