"""Exact checks of the in-place-versus-copy rule and of what metadata costs.

A block whose VBA was born after the running point's newest snapshot keeps
its VBA when rewritten (only VBA -> PBA changes); an older one gets a new VBA
so the snapshot keeps the old one. Sequential writes cost one extent per map
and get contiguous PBAs; snapshot creation creates no B+tree node; a PBA given
up by a rewrite is reused only after the commit that stops using it.
"""

from __future__ import annotations

import os

import pytest

from .accounting import assert_consistent
from .util import pattern, read_in_child, settled

BS = 4096


def vba_of(disk, lba):
    (piece,) = settled(disk)._lba.pieces(lba, 1)
    return piece[1]


def pba_of(disk, lba):
    with disk.lock:             # one-block writes wait in the recent table (vdisk/recent.py)
        (piece,) = disk._vba.pieces(vba_of(disk, lba), 1)
    return piece[1]


def free_pbas(disk):
    out = set()
    for p, n in disk.alloc.free.items():
        out.update(range(p, p + n))
    return out


def test_rewrites_without_snapshot_keep_one_vba(disk):
    start = disk.state.vba_next
    for i in range(1000):
        disk.write(3 * BS, pattern(i, BS))
    assert disk.state.vba_next == start + 1
    assert len(settled(disk)._lba.tree) == 1
    assert len(settled(disk)._vba.tree) == 1
    assert len(disk._csum) == 1
    assert disk.read(3 * BS, BS) == pattern(999, BS)
    disk.flush()
    assert disk.info()["physical_bytes"] == BS
    assert_consistent(disk)


def test_rewrites_after_snapshot_copy_once(disk):
    disk.write(0, pattern(-1, BS))
    disk.create_snapshot("before")
    start = disk.state.vba_next
    disk.write(0, pattern(0, BS))
    assert disk.state.vba_next == start + 1
    new_vba = vba_of(disk, 0)
    assert new_vba == start
    for i in range(1, 1000):
        disk.write(0, pattern(i, BS))
        assert disk.state.vba_next == start + 1
    assert vba_of(disk, 0) == new_vba
    assert len(settled(disk)._vba.tree) == 2          # the snapshot's VBA and the new one
    assert disk.open_snapshot("before").read(0, BS) == pattern(-1, BS)
    assert disk.read(0, BS) == pattern(999, BS)
    disk.flush()
    assert disk.info()["physical_bytes"] == 2 * BS
    assert_consistent(disk)


def test_snapshot_between_rewrites_copies_every_time(disk):
    disk.write(0, pattern(0, BS))
    for i in range(1, 60):
        disk.create_snapshot(f"s{i}")
        before = disk.state.vba_next
        disk.write(0, pattern(i, BS))
        assert disk.state.vba_next == before + 1
        # A second rewrite before the next snapshot stays in place.
        disk.write(0, pattern(i + 1000, BS))
        assert disk.state.vba_next == before + 1
    for i in range(1, 60):
        want = pattern(0 if i == 1 else i - 1 + 1000, BS)
        assert disk.open_snapshot(f"s{i}").read(0, BS) == want
    disk.flush()
    assert disk.info()["physical_bytes"] == 60 * BS
    assert_consistent(disk)


def test_partial_rewrite_follows_the_rule(disk):
    disk.write(0, pattern(1, 3 * BS))
    vbas = [vba_of(disk, b) for b in range(3)]
    disk.write(BS + 17, b"abc")              # sub-block, in place
    assert [vba_of(disk, b) for b in range(3)] == vbas
    disk.create_snapshot("s")
    disk.write(BS - 1, b"xy")                # crosses the edge of blocks 0 and 1
    after = [vba_of(disk, b) for b in range(3)]
    assert after[2] == vbas[2]
    assert after[0] != vbas[0] and after[1] != vbas[1]
    want = bytearray(pattern(1, 3 * BS))
    want[BS + 17:BS + 20] = b"abc"
    assert disk.open_snapshot("s").read(0, 3 * BS) == want
    want[BS - 1:BS + 1] = b"xy"
    assert disk.read(0, 3 * BS) == want


def test_sequential_write_costs_one_extent_per_map(disk):
    data = pattern(7, 1 << 20)
    disk.write(0, data)
    assert len(settled(disk)._lba.tree) == 1
    assert len(disk._vba.tree) == 1
    (_, vba, n), = settled(disk)._lba.extents()
    assert n == 256
    (v, pba, m), = disk._vba.extents()
    assert (v, m) == (vba, 256)
    assert disk.read(0, 1 << 20) == data


def test_sequential_small_writes_coalesce_and_get_contiguous_pbas(make_disk):
    d = make_disk(4 << 20)
    for i in range(512):
        d.write(i * BS, pattern(i, BS))
    assert len(settled(d)._lba.tree) == 1
    assert len(settled(d)._vba.tree) == 1
    pbas = [pba_of(d, i) for i in range(512)]
    assert pbas == list(range(pbas[0], pbas[0] + 512))
    # Across a flush too: the allocator continues where it stopped.
    d.flush()
    for i in range(512, 1024):
        d.write(i * BS, pattern(i, BS))
    pbas = [pba_of(d, i) for i in range(1024)]
    assert pbas == list(range(pbas[0], pbas[0] + 1024))
    assert len(settled(d)._lba.tree) == 1 and len(settled(d)._vba.tree) == 1
    d.flush()
    assert_consistent(d)


def _snapshot_node_cost(d):
    d.flush()
    ids0 = d.forest.next_node_id
    stored0 = sum(1 for _ in d.store.node_ids())
    d.create_snapshot(f"snap{ids0}")
    return d.forest.next_node_id - ids0, sum(1 for _ in d.store.node_ids()) - stored0


def test_snapshot_creation_creates_no_nodes(make_disk, scratch):
    small = make_disk(1 << 20, path=os.path.join(scratch, "small"))
    small.write(0, pattern(1, 1 << 20))
    big = make_disk(128 << 20, path=os.path.join(scratch, "big"))
    # Descending LBAs defeat extent joining: 16384 entries, many leaves.
    buf = pattern(2, BS)
    for b in range(16383, -1, -1):
        big.write(b * BS, buf)
    assert len(settled(big)._lba.tree) == 16384
    assert big.forest.tree("lba").height >= 2
    assert _snapshot_node_cost(small) == (0, 0)
    assert _snapshot_node_cost(big) == (0, 0)
    # The first write after a snapshot shadows one path, not the tree.
    ids = big.forest.next_node_id
    big.write(5 * BS, pattern(3, BS))
    assert big.forest.next_node_id - ids <= 2 * big.forest.tree("lba").height + 4
    (snap,) = big.snapshots(exclusive=False)
    assert big.open_snapshot(snap.name).read(5 * BS, BS) == buf
    assert big.read(5 * BS, BS) == pattern(3, BS)


def test_old_pba_is_reused_only_after_commit(disk):
    disk.write(0, pattern(1, BS))
    disk.flush()
    old = pba_of(disk, 0)
    disk.write(0, pattern(2, BS))            # in place: same VBA, new PBA
    new = pba_of(disk, 0)
    assert new != old
    assert (old, 1) in disk.alloc.pending
    assert old not in free_pbas(disk)
    # Many more writes before the commit never get the old PBA.
    for i in range(1, 200):
        disk.write(i * BS, pattern(100 + i, BS))
        assert pba_of(disk, i) != old
    # The committed state still maps VBA -> old PBA, and its data is intact.
    assert read_in_child(disk.path, 0, BS) == pattern(1, BS)
    disk.flush()                             # through the redo log: still not reusable
    assert (old, 1) in disk.alloc.pending
    disk.checkpoint()
    assert disk.alloc.pending == []
    assert old in free_pbas(disk)
    assert disk.read(0, BS) == pattern(2, BS)
    assert_consistent(disk)


def test_freed_pba_is_punched_after_commit(disk):
    disk.write(0, pattern(1, 4 * BS))
    disk.flush()
    old = [pba_of(disk, b) for b in range(4)]
    disk.trim(0, 4 * BS)
    fd = os.open(os.path.join(disk.path, "data"), os.O_RDONLY)
    try:
        assert os.pread(fd, BS, old[0] * BS) == pattern(1, 4 * BS)[:BS]   # not yet: uncommitted
        disk.flush()                                # through the redo log: still not
        assert os.pread(fd, BS, old[0] * BS) == pattern(1, 4 * BS)[:BS]
        disk.checkpoint()
        for p in old:
            assert os.pread(fd, BS, p * BS) == bytes(BS)
    finally:
        os.close(fd)
    assert disk.info()["physical_bytes"] == 0
    assert_consistent(disk)


def _straddling_extent(disk):
    """Block 0 written before a snapshot, block 1 after: one extent across the watermark."""
    disk.write(0, pattern(1, BS))
    disk.create_snapshot("s")
    disk.write(BS, pattern(2, BS))
    wm = disk.state.vba_watermark
    (_, vba, n), = settled(disk)._lba.extents()
    assert n == 2 and vba < wm < vba + n        # joined: LBAs and VBAs are contiguous
    return vba


def test_extent_across_the_watermark_is_freed_by_trim(disk):
    _straddling_extent(disk)
    disk.trim(0, 2 * BS)
    disk.flush()
    assert_consistent(disk)
    assert disk.info()["physical_bytes"] == BS     # only the snapshot's block


def test_extent_across_the_watermark_is_rewritten_in_place(disk):
    vba = _straddling_extent(disk)
    disk.write(0, pattern(3, 2 * BS))
    # Block 1's VBA was born after the snapshot: it must be kept (in place).
    assert [p[1] for p in settled(disk)._lba.pieces(1, 1)] == [vba + 1]
    disk.flush()
    assert_consistent(disk)
    assert disk.info()["physical_bytes"] == 3 * BS


def test_isolated_freed_block_stays_in_the_file_for_reuse(disk):
    # Punching costs a journal transaction per call; single scattered blocks
    # are left for the allocator to hand out again (PUNCH_MIN_BYTES).
    disk.write(0, pattern(1, 64 * BS))
    disk.flush()
    old = pba_of(disk, 10)
    disk.write(10 * BS, pattern(2, BS))
    disk.checkpoint()                       # free with a full commit (a flush goes through the log)
    assert old in free_pbas(disk)
    fd = os.open(os.path.join(disk.path, "data"), os.O_RDONLY)
    try:
        assert os.pread(fd, BS, old * BS) == pattern(1, 64 * BS)[10 * BS:11 * BS]
    finally:
        os.close(fd)
    info = disk.info()
    assert info["physical_bytes"] == 64 * BS
    assert info["file_bytes"] >= 65 * BS
    assert_consistent(disk)
