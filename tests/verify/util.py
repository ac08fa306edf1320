"""Helpers of the verify tests: disks with many snapshots, and damage.

Damage is made the way a disk fault or an engine bug would make it: bytes
changed in the LMDB files or the data file of a closed disk, or wrong but
well-formed entries committed through the engine's own trees.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile

import lmdb

from vdisk import Disk

# LMDB commits fsync; on a memory file system that costs nothing (same rule
# as tests/engine). VDISK_TEST_TMPDIR overrides the choice.
SCRATCH = os.environ.get("VDISK_TEST_TMPDIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)

_NODE_KEY = struct.Struct(">Q")


def scratch_dir(prefix: str = "vdisk-verify-") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH)


def build_disk(path: str, snapshots: int = 12, block_size: int = 512, blocks: int = 2048,
               seed: int = 0) -> Disk:
    """A disk whose running point and snapshots have trees of height 2 or more.

    Every block is first written alone in a shuffled order, so neighbours get
    unrelated VBAs and the map holds about one extent per block (several
    leaves). Between snapshots: a contiguous rewrite, writes at odd offsets,
    a trim. Returns the disk open for writing, flushed.
    """
    rng = random.Random(seed)
    d = Disk.create(path, blocks * block_size, block_size)
    order = list(range(blocks))
    rng.shuffle(order)
    for b in order:
        d.write(b * block_size, bytes([1 + b % 250]) * block_size)
    for i in range(snapshots):
        d.create_snapshot(f"s{i}")
        start = rng.randrange(blocks - 40)
        d.write(start * block_size, rng.randbytes(rng.randrange(8, 40) * block_size))
        off = rng.randrange(blocks * block_size - 3000)
        d.write(off, rng.randbytes(rng.randrange(1, 3000)))
        off = rng.randrange(blocks * block_size - 5000)
        d.trim(off, rng.randrange(1, 5000))
    d.flush()
    return d


# ---------------------------------------------------------------- LMDB surgery

def _env(disk_path):
    return lmdb.open(os.path.join(disk_path, "meta"), max_dbs=4, subdir=True, lock=True)


def raw_node(disk_path, node_id: int) -> bytes | None:
    env = _env(disk_path)
    try:
        db = env.open_db(b"nodes")
        with env.begin(db=db) as txn:
            return txn.get(_NODE_KEY.pack(node_id))
    finally:
        env.close()


def put_raw_node(disk_path, node_id: int, buf: bytes | None):
    env = _env(disk_path)
    try:
        db = env.open_db(b"nodes")
        with env.begin(write=True, db=db) as txn:
            if buf is None:
                txn.delete(_NODE_KEY.pack(node_id))
            else:
                txn.put(_NODE_KEY.pack(node_id), buf)
    finally:
        env.close()


def put_raw_meta(disk_path, key: bytes, buf: bytes | None):
    env = _env(disk_path)
    try:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            if buf is None:
                txn.delete(key)
            else:
                txn.put(key, buf)
    finally:
        env.close()


def leaf_ids(disk: Disk, tree_name: str) -> list[int]:
    """Ids of the leaves of a tree, in key order."""
    f = disk.forest
    out, stack = [], [f.tree(tree_name).root]
    while stack:
        node = f.node(stack.pop())
        if node.leaf:
            out.append(node.id)
        else:
            stack.extend(reversed(node.vals))
    return out


def node_ids(disk: Disk, tree_name: str) -> set[int]:
    """Ids of every node of a tree."""
    f = disk.forest
    out, stack = set(), [f.tree(tree_name).root]
    while stack:
        node = f.node(stack.pop())
        out.add(node.id)
        if not node.leaf:
            stack.extend(node.vals)
    return out


def lba_extents(disk: Disk, tree_name: str):
    from vdisk.extents import ExtentMap
    return list(ExtentMap(disk.forest.tree(tree_name)).extents())
