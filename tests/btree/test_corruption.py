"""Damaged metadata: decoding refuses it, reads fail loudly, the checker names it.

Damage is made the way a disk fault or a bug would make it: bytes changed
directly in the LMDB files with the ``lmdb`` module (node ids are big-endian
u64 keys of the ``nodes`` database), or nodes re-encoded validly but with
wrong content.
"""

from __future__ import annotations

import random
import struct

import pytest

from btree_util import (DEEP, KeyCodec, build_tree, flip_byte, problems, put_raw_meta, put_raw_node,
                        raw_meta, raw_node)
from vdisk.btree import Forest, Layout, LmdbNodeStore, check_forest, check_tree
from vdisk.btree import format as fmt
from vdisk.errors import CorruptNode, IntegrityError, UnsupportedVersion

# ----------------------------------------------------------------- decode


def _sample_nodes():
    leaf = fmt.encode_node(42, 9, True, Layout("bytes:8", "bytes:64"),
                           [b"key%05d" % i for i in range(5)], [b"%064d" % i for i in range(5)])
    inner = fmt.encode_node(42, 9, False, Layout("u64", "bytes:64"), [0, 10, 20, 30], [5, 6, 7, 8])
    return {"leaf": leaf, "inner": inner}


@pytest.mark.parametrize("kind", ["leaf", "inner"])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_of_a_node_is_detected(kind, mask):
    buf = _sample_nodes()[kind]
    for offset in range(len(buf)):
        bad = flip_byte(buf, offset, mask)
        if offset == 4 and bad[4] > fmt.NODE_VERSION:
            # The version byte is read before the checksum: a node that says
            # it is newer is refused as such (still an IntegrityError).
            with pytest.raises(UnsupportedVersion, match="metadata node 42 has format version"):
                fmt.decode_node(42, bad)
            continue
        with pytest.raises(CorruptNode) as err:
            fmt.decode_node(42, bad)
        assert err.value.node_id == 42, offset
        assert str(err.value).startswith("metadata node 42 is corrupt: "), offset
        assert err.value.problem, offset


@pytest.mark.parametrize("kind", ["leaf", "inner"])
def test_truncated_or_extended_node_is_corrupt(kind):
    buf = _sample_nodes()[kind]
    for length in range(len(buf)):
        with pytest.raises(CorruptNode, match="truncated|length") as err:
            fmt.decode_node(42, buf[:length])
        assert err.value.node_id == 42
    with pytest.raises(CorruptNode, match=f"length {len(buf) + 1} bytes"):
        fmt.decode_node(42, buf + b"\0")


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b"XBTN" + b[4:], "bad magic b'XBTN'"),
    (lambda b: b[:4] + b"\0" + b[5:], "unknown format version 0"),
    (lambda b: b[:5] + b"\x03" + b[6:], "unknown node kind 3"),
    (lambda b: b[:8] + b"\x07" + b[9:], "bad field types"),
    (lambda b: b[:6] + b"\x09\x00" + b[8:], "length .* bytes, 9 entries need"),
    (lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "checksum mismatch"),
    (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum mismatch"),
    (lambda b: None, "missing from the node store"),
    (lambda b: b"", "truncated: 0 bytes"),
])
def test_corrupt_node_error_names_the_node_and_the_problem(damage, problem):
    buf = _sample_nodes()["leaf"]
    with pytest.raises(CorruptNode, match=f"^metadata node 42 is corrupt: {problem}"):
        fmt.decode_node(42, damage(buf))


def test_node_read_under_the_wrong_id_is_corrupt():
    buf = _sample_nodes()["inner"]
    with pytest.raises(CorruptNode, match="metadata node 43 is corrupt: holds node 42's content") as err:
        fmt.decode_node(43, buf)
    assert err.value.node_id == 43


def test_inner_node_whose_children_are_not_u64_is_corrupt():
    buf = bytearray(_sample_nodes()["inner"])
    buf[10:12] = bytes([fmt.T_BYTES, 8])
    with pytest.raises(CorruptNode, match="inner node whose children are not u64 ids"):
        fmt.decode_node(42, bytes(buf))


def _with_version(buf: bytes, version: int) -> bytes:
    """Re-frame a node as another format version, with a valid checksum."""
    head = bytearray(buf[:32])
    head[4] = version
    body = buf[fmt.HEADER_BYTES:]
    return bytes(head) + fmt._checksum(bytes(head), body) + body


def test_node_from_a_newer_format_is_unsupported_not_corrupt():
    buf = _with_version(_sample_nodes()["leaf"], fmt.NODE_VERSION + 1)
    with pytest.raises(UnsupportedVersion, match="metadata node 42 has format version 2; .*upgrade vdisk"):
        fmt.decode_node(42, buf)


# ----------------------------------------------------------------- stored damage


@pytest.fixture
def stored(scratch):
    """A closed LMDB store: tree 'main' (height >= 3), snapshot 'snap', later writes to 'main'."""
    path = scratch / "meta"
    store = LmdbNodeStore(path)
    forest = Forest(store)
    model = build_tree(forest, "main", DEEP, 300)
    forest.snapshot("main", "snap")
    codec = KeyCodec(DEEP)
    for n in range(0, 300, 25):
        forest.tree("main").insert(codec.key(n), codec.value(n + 1))
    forest.commit()
    info = {
        "path": path,
        "model": model,
        "main": _node_map(forest, forest.tree("main")),
        "snap": _node_map(forest, forest.tree("snap")),
        "main_rec": forest.tree("main").rec,
        "next_id": forest.next_node_id,
    }
    assert forest.tree("main").height >= 3
    store.close()
    return info


def _node_map(forest, tree):
    """node id -> (node, parent id, index in parent, depth) for every node of the tree."""
    out = {}
    stack = [(tree.root, None, None, 0)]
    while stack:
        node_id, parent, index, depth = stack.pop()
        node = forest.node(node_id)
        out[node_id] = (node, parent, index, depth)
        if not node.leaf:
            stack.extend((c, node_id, i, depth + 1) for i, c in enumerate(node.vals))
    return out


def _min_key(nodes, node_id):
    node = nodes[node_id][0]
    while not node.leaf:
        node = nodes[node.vals[0]][0]
    return node.keys[0]


class Opened:
    def __init__(self, path):
        self.store = LmdbNodeStore(path)
        self.forest = Forest(self.store)

    def __enter__(self):
        return self.forest

    def __exit__(self, *exc):
        self.store.close()


def test_healthy_store_checks_clean(stored):
    with Opened(stored["path"]) as forest:
        assert problems(forest) == []


def test_reading_through_any_corrupted_node_raises_instead_of_returning_data(stored):
    rnd = random.Random(1)
    path = stored["path"]
    nodes = stored["main"]
    for node_id, (node, _, _, depth) in sorted(nodes.items()):
        good = raw_node(path, node_id)
        offset = rnd.randrange(len(good))
        if offset == 4:
            offset = 5
        put_raw_node(path, node_id, flip_byte(good, offset, 1 << rnd.randrange(8)))
        key = _min_key(nodes, node_id)
        with Opened(path) as forest:
            tree = forest.tree("main")
            with pytest.raises(CorruptNode) as err:
                tree.get(key)
            assert err.value.node_id == node_id
            with pytest.raises(CorruptNode, match=f"metadata node {node_id} is corrupt"):
                list(tree.items())
            with pytest.raises(CorruptNode, match=f"metadata node {node_id} is corrupt"):
                list(tree.items_reverse())
            found = [p for p in problems(forest) if p.node_id == node_id]
            assert found and all(p.kind == "corrupt" for p in found)
        put_raw_node(path, node_id, good)


def test_opening_a_store_from_a_newer_vdisk_is_refused_and_leaves_it_alone(stored):
    path = stored["path"]
    newer = b"VBTSTORE" + struct.pack("<I", fmt.STORE_VERSION + 1)
    put_raw_meta(path, b"format", newer)
    for readonly in (False, True):
        store = LmdbNodeStore(path, readonly=readonly)
        try:
            with pytest.raises(UnsupportedVersion, match="store format 2.*upgrade vdisk"):
                Forest(store)
        finally:
            store.close()
    assert raw_meta(path, b"format") == newer


def test_opening_a_store_with_a_foreign_header_is_refused(stored):
    put_raw_meta(stored["path"], b"format", b"SOMETHNG" + struct.pack("<I", 1))
    store = LmdbNodeStore(stored["path"])
    try:
        with pytest.raises(IntegrityError, match="not a vdisk B\\+tree store"):
            Forest(store)
    finally:
        store.close()


def test_node_from_a_newer_format_is_refused_on_read_and_named_by_the_checker(stored):
    path = stored["path"]
    leaf_id = next(i for i, (n, *_r) in stored["main"].items() if n.leaf)
    put_raw_node(path, leaf_id, _with_version(raw_node(path, leaf_id), 2))
    with Opened(path) as forest:
        with pytest.raises(UnsupportedVersion, match=f"metadata node {leaf_id} has format version 2"):
            list(forest.tree("main").items())
        assert {p.kind for p in problems(forest) if p.node_id == leaf_id} == {"version"}


def test_tree_record_from_a_newer_format_is_refused_and_named_by_the_checker(stored):
    path = stored["path"]
    rec = bytearray(raw_meta(path, b"tree/snap"))
    rec[0] = 2
    put_raw_meta(path, b"tree/snap", bytes(rec))
    with Opened(path) as forest:
        with pytest.raises(UnsupportedVersion, match="tree record 'snap' has version 2"):
            forest.tree("snap")
        assert forest.tree("main").get(KeyCodec(DEEP).key(1)) is not None
        found = [(p.tree, p.kind) for p in problems(forest, unreferenced=False)]
        assert found == [("snap", "version")]


# ----------------------------------------------------------------- checker


def _rewrite(path, node_id, **change):
    """Re-encode a stored node validly with some fields changed."""
    d = fmt.decode_node(node_id, raw_node(path, node_id))
    fields = dict(seq=d.seq, leaf=d.leaf, layout=d.layout, keys=list(d.keys), vals=list(d.vals))
    fields.update(change)
    put_raw_node(path, node_id, fmt.encode_node(node_id, fields["seq"], fields["leaf"], fields["layout"],
                                                fields["keys"], fields["vals"]))


def _second_leaf(stored, tree="main"):
    """A leaf that is not the first child of its parent, with its parent."""
    nodes = stored[tree]
    for node_id, (node, parent, index, _) in sorted(nodes.items()):
        if node.leaf and index and len(node.keys) >= 3:
            return node_id, node, nodes[parent][0], index
    raise AssertionError("no such leaf")


def _check(stored, **kw):
    with Opened(stored["path"]) as forest:
        return problems(forest, **kw)


def _assert_named(found, kind, node_id, tree="main"):
    hits = [p for p in found if p.kind == kind and p.node_id == node_id and p.tree == tree]
    assert hits, f"no {kind!r} problem for node {node_id}; found:\n" + "\n".join(
        f"{p.kind}: {p}" for p in found)
    p = hits[0]
    assert f"tree {tree!r} node {node_id}" in str(p)
    assert p.path and p.path[-1] == node_id
    return p


def test_checker_names_a_flipped_byte(stored):
    leaf_id, *_ = _second_leaf(stored)
    put_raw_node(stored["path"], leaf_id, flip_byte(raw_node(stored["path"], leaf_id), 100))
    p = _assert_named(_check(stored), "corrupt", leaf_id)
    assert "checksum mismatch" in p.message
    assert p.path[0] == stored["main_rec"].root


def test_checker_names_keys_out_of_order(stored):
    leaf_id, leaf, *_ = _second_leaf(stored)
    keys = list(leaf.keys)
    keys[1], keys[2] = keys[2], keys[1]
    _rewrite(stored["path"], leaf_id, keys=keys)
    p = _assert_named(_check(stored), "key-order", leaf_id)
    assert "at index 2 is not above" in p.message


def test_checker_names_a_key_outside_the_parent_separators(stored):
    leaf_id, leaf, parent, index = _second_leaf(stored)
    below = stored["main"][parent.vals[index - 1]][0].keys[-1]   # the left neighbour's last key
    _rewrite(stored["path"], leaf_id, keys=[below] + list(leaf.keys[1:]))
    p = _assert_named(_check(stored), "bounds", leaf_id)
    assert "below the separator" in p.message


def test_checker_names_an_underfull_node(stored):
    leaf_id, leaf, *_ = _second_leaf(stored)
    _rewrite(stored["path"], leaf_id, keys=leaf.keys[:1], vals=leaf.vals[:1])
    found = _check(stored)
    assert "fewer than the minimum" in _assert_named(found, "fanout", leaf_id).message
    assert any(p.kind == "count" for p in found)


def test_checker_names_a_leaf_where_an_inner_node_belongs(stored):
    nodes = stored["main"]
    inner_id = next(i for i, (n, p, _, d) in sorted(nodes.items()) if not n.leaf and p is not None)
    child = nodes[nodes[inner_id][0].vals[0]][0]
    _rewrite(stored["path"], inner_id, leaf=True, layout=DEEP, keys=child.keys, vals=child.vals)
    assert "leaf at depth" in _assert_named(_check(stored), "depth", inner_id).message


def test_checker_names_a_record_height_that_disagrees_with_the_tree(stored):
    rec = stored["main_rec"]
    rec.height += 1
    put_raw_meta(stored["path"], b"tree/main", fmt.encode_tree_record(rec))
    assert "depth" in {p.kind for p in _check(stored) if p.tree == "main"}


def test_checker_names_a_child_newer_than_its_parent(stored):
    leaf_id, leaf, parent, _ = _second_leaf(stored)
    _rewrite(stored["path"], leaf_id, seq=parent.seq + 5)
    p = _assert_named(_check(stored), "seq", leaf_id)
    assert f"seq {parent.seq + 5} is newer than its parent's {parent.seq}" in p.message


def test_checker_names_a_snapshot_node_newer_than_the_snapshot(stored):
    nodes = stored["snap"]
    root = nodes[next(i for i, v in nodes.items() if v[1] is None)][0]
    snap_seq = None
    with Opened(stored["path"]) as forest:
        snap_seq = forest.tree("snap").snap_seq
    assert root.id not in stored["main"]          # main copied its root after the snapshot
    _rewrite(stored["path"], root.id, seq=snap_seq + 1)
    p = _assert_named(_check(stored), "seq", root.id, tree="snap")
    assert "newer than the snapshot's" in p.message


def test_checker_names_a_missing_node(stored):
    leaf_id, *_ = _second_leaf(stored)
    put_raw_node(stored["path"], leaf_id, None)
    found = _check(stored)
    p = _assert_named(found, "missing", leaf_id)
    assert "missing from the node store" in p.message
    assert not any(q.kind == "count" for q in found), "a count is unknown, not wrong, with a node missing"


def test_checker_names_a_leaked_node(stored):
    leaf_id, *_ = _second_leaf(stored)
    spare = stored["next_id"] + 3
    d = fmt.decode_node(leaf_id, raw_node(stored["path"], leaf_id))
    put_raw_node(stored["path"], spare, fmt.encode_node(spare, d.seq, True, d.layout, d.keys, d.vals))
    found = _check(stored)
    assert [(p.kind, p.tree) for p in found] == [("leak", "(store)")]
    assert f"1 stored nodes are reached by no tree: {spare}" in found[0].message
    assert _check(stored, unreferenced=False) == []


def test_checker_names_a_node_shared_with_a_tree_that_would_change_it_in_place(stored):
    with Opened(stored["path"]) as forest:
        forest.clone("snap", "clone")
        forest.commit()
        rec = forest.tree("clone").rec
    rec.snap_seq = 0          # as if the clone thought every node its own
    put_raw_meta(stored["path"], b"tree/clone", fmt.encode_tree_record(rec))
    found = _check(stored)
    p = _assert_named(found, "shared", rec.root, tree="clone")
    assert "shared with 'snap'" in p.message
    assert {q.kind for q in found} == {"shared"}


def test_checker_names_a_node_reached_twice(stored):
    nodes = stored["main"]
    inner_id = next(i for i, (n, p, _, d) in sorted(nodes.items()) if not n.leaf and p is not None)
    inner = nodes[inner_id][0]
    _rewrite(stored["path"], inner_id, vals=[inner.vals[0]] * len(inner.vals))
    assert "shape" in {p.kind for p in _check(stored)}


def test_checker_names_a_wrong_layout(stored):
    leaf_id, leaf, *_ = _second_leaf(stored)
    _rewrite(stored["path"], leaf_id, layout=Layout(DEEP.key, "u64"), vals=list(range(len(leaf.keys))))
    _assert_named(_check(stored), "layout", leaf_id)


def test_checker_names_a_damaged_tree_record(stored):
    put_raw_meta(stored["path"], b"tree/snap", raw_meta(stored["path"], b"tree/snap")[:-3])
    found = _check(stored, unreferenced=False)
    assert [(p.tree, p.kind) for p in found] == [("snap", "record")]
    assert "tree record 'snap' is damaged" in found[0].message


def test_checker_names_a_wrong_entry_count(stored):
    rec = stored["main_rec"]
    rec.count += 1
    put_raw_meta(stored["path"], b"tree/main", fmt.encode_tree_record(rec))
    found = _check(stored)
    assert [(p.tree, p.kind) for p in found] == [("main", "count")]
    assert f"record says {rec.count} entries, tree holds {rec.count - 1}" in found[0].message


def test_checker_reports_every_damage_in_one_run(stored):
    nodes = stored["main"]
    leaves = [i for i, (n, p, idx, _) in sorted(nodes.items()) if n.leaf and idx]
    a, b = leaves[0], leaves[-1]
    put_raw_node(stored["path"], a, flip_byte(raw_node(stored["path"], a), 70))
    put_raw_node(stored["path"], b, None)
    found = _check(stored)
    _assert_named(found, "corrupt", a)
    _assert_named(found, "missing", b)


def test_checker_reuses_verified_subtrees_between_snapshots(stored):
    with Opened(stored["path"]) as forest:
        first, second = check_forest(forest, names=["snap", "main"])
        assert first.ok and second.ok
        assert second.nodes_shared > 0
        assert second.nodes_checked < first.nodes_checked      # only what differs is read again
        alone = check_tree(forest, "main")
        assert alone.nodes_checked == len(stored["main"]) and alone.nodes_shared == 0
