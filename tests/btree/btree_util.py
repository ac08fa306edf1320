"""Helpers shared by the B+tree tests: layouts, key codecs, node walks, LMDB surgery."""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass

import lmdb

from vdisk.btree import Forest, Layout
from vdisk.btree.check import check_forest


# LMDB commits fsync; on a memory file system that costs nothing. These tests
# check logic and crash atomicity (SIGKILL keeps the page cache), not the
# device. VDISK_TEST_TMPDIR overrides the choice (same rule as tests/engine).
SCRATCH = os.environ.get("VDISK_TEST_TMPDIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)


def scratch_dir(prefix: str = "vdisk-btree-") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH)


@dataclass(frozen=True)
class KeyCodec:
    """Maps small ints to a layout's keys and values, preserving key order."""

    layout: Layout

    def key(self, n: int):
        kt, kw = self.layout.key_type
        if kt == 0:
            return n
        return n.to_bytes(4, "big").ljust(kw, b"k")

    def value(self, n: int):
        vt, vw = self.layout.value_type
        if vt == 0:
            return n
        return n.to_bytes(8, "big").ljust(vw, b"v")


# ~19 entries per leaf, 252 per inner node: leaf splits and merges with few keys.
WIDE_VALUES = Layout("u64", "bytes:200")
# Byte-string keys: 56 entries per leaf.
BYTES_KEYS = Layout("bytes:8", "bytes:64")
# 255-byte keys: 11 entries per leaf, 15 per inner node, so a few hundred keys
# make a tree of height 3-4 and inner nodes split, borrow and merge too.
DEEP = Layout("bytes:255", "bytes:100")

# u64 -> u64, the disk's extent maps: both leaf fields live in array('Q')
# (252 entries per leaf, so the key space makes a few leaves).
U64 = Layout("u64", "u64")

LAYOUTS = {"wide": WIDE_VALUES, "bytes": BYTES_KEYS, "deep": DEEP, "u64": U64}


def reachable(forest: Forest, root: int) -> list:
    """Every node of the subtree at ``root``, parents before children."""
    out, stack = [], [root]
    while stack:
        node = forest.node(stack.pop())
        out.append(node)
        if not node.leaf:
            stack.extend(reversed(node.vals))
    return out


def node_state(node) -> tuple:
    return (node.id, node.seq, node.leaf, tuple(node.keys), tuple(node.vals))


def leaf_for(tree, key):
    return tree._descend(key)[1]


def path_ids(tree, key) -> list[int]:
    path, leaf = tree._descend(key)
    return [n.id for n, _ in path] + [leaf.id]


def problems(forest: Forest, **kw) -> list:
    return [p for r in check_forest(forest, **kw) for p in r.problems]


def problem_kinds(forest: Forest, **kw) -> set[str]:
    return {p.kind for p in problems(forest, **kw)}


def assert_forest_ok(forest: Forest, **kw):
    found = problems(forest, **kw)
    assert not found, "checker found problems:\n" + "\n".join(str(p) for p in found)


# ---------------------------------------------------------------- LMDB surgery
# Direct edits of a closed LmdbNodeStore's files, as a disk fault would make.

_NODE_KEY = struct.Struct(">Q")


def _env(path):
    return lmdb.open(str(path), max_dbs=4, subdir=True, lock=True)


def raw_node(path, node_id: int) -> bytes | None:
    env = _env(path)
    try:
        db = env.open_db(b"nodes")
        with env.begin(db=db) as txn:
            return txn.get(_NODE_KEY.pack(node_id))
    finally:
        env.close()


def put_raw_node(path, node_id: int, buf: bytes | None):
    env = _env(path)
    try:
        db = env.open_db(b"nodes")
        with env.begin(write=True, db=db) as txn:
            if buf is None:
                txn.delete(_NODE_KEY.pack(node_id))
            else:
                txn.put(_NODE_KEY.pack(node_id), buf)
    finally:
        env.close()


def put_raw_meta(path, key: bytes, buf: bytes):
    env = _env(path)
    try:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            txn.put(key, buf)
    finally:
        env.close()


def raw_meta(path, key: bytes) -> bytes | None:
    env = _env(path)
    try:
        db = env.open_db(b"meta")
        with env.begin(db=db) as txn:
            return txn.get(key)
    finally:
        env.close()


def flip_byte(buf: bytes, offset: int, mask: int = 0xFF) -> bytes:
    b = bytearray(buf)
    b[offset] ^= mask
    return bytes(b)


def scrambled(n: int) -> list[int]:
    """0..n-1 in a fixed scrambled order (inserting in it fills leaves unevenly)."""
    return sorted(range(n), key=lambda i: (i * 2654435761) % 4294967291)


def build_tree(forest: Forest, name: str, layout: Layout, n: int) -> dict:
    """Create tree ``name`` holding keys 0..n-1 inserted one by one; return its model."""
    codec = KeyCodec(layout)
    tree = forest.create_tree(name, layout)
    model = {}
    for i in scrambled(n):
        tree.insert(codec.key(i), codec.value(i))
        model[codec.key(i)] = codec.value(i)
    return model
