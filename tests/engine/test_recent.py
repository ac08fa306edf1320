"""The recent table of one-block writes (vdisk/recent.py): every path that
meets a block still in it answers as if the trees held it."""

from __future__ import annotations

import errno

import pytest

from vdisk import Disk
from vdisk.errors import ChecksumMismatch

from .accounting import assert_consistent
from .util import damage_data, pattern, read_in_child

BS = 4096
MiB = 1 << 20


@pytest.fixture
def filled(make_disk):
    """A 4 MiB disk written whole and flushed: every block has a committed VBA."""
    d = make_disk(4 * MiB)
    d.write(0, pattern(0, 4 * MiB))
    d.flush()
    return d


def _expect(base: bytes, writes: dict[int, bytes]) -> bytearray:
    want = bytearray(base)
    for b, data in writes.items():
        want[b * BS:(b + 1) * BS] = data
    return want


def test_overwrites_wait_in_the_table_and_every_read_sees_them(filled):
    d = filled
    writes = {b: pattern(100 + b, BS) for b in (3, 4, 9, 700, 1023)}
    for b, data in writes.items():
        d.write(b * BS, data)
    assert set(d._recent) and len(d._recent) == len(writes)
    for b, data in writes.items():
        assert d.read(b * BS, BS) == data                          # the one-block path
        assert d.read(b * BS + 7, 100) == data[7:107]              # a sub-block read
    assert d._recent, "one-block reads must not settle"
    want = _expect(pattern(0, 4 * MiB), writes)
    assert d.read(2 * BS, 8 * BS) == want[2 * BS:10 * BS]          # the general path settles
    assert d.read(0, 4 * MiB) == want
    assert_consistent(d)


def test_rewrites_of_a_recent_block_free_the_pba_they_replace(filled):
    d = filled
    for i in range(50):
        d.write(5 * BS, pattern(i, BS))
    assert len(d._recent) == 1
    assert d.read(5 * BS, BS) == pattern(49, BS)
    d.flush()
    assert d._recent                        # a flush through the redo log leaves it recent
    d.checkpoint()
    assert not d._recent
    assert d.read(5 * BS, BS) == pattern(49, BS)
    assert d.info()["physical_bytes"] == 4 * MiB
    assert_consistent(d)


def test_a_sub_block_write_merges_with_a_recent_block(filled):
    d = filled
    d.write(6 * BS, pattern(1, BS))
    d.write(6 * BS + 10, b"abc")
    want = bytearray(pattern(1, BS))
    want[10:13] = b"abc"
    assert d.read(6 * BS, BS) == want
    assert_consistent(d)


def test_a_multi_block_write_over_recent_blocks(filled):
    d = filled
    d.write(8 * BS, pattern(1, BS))
    d.write(9 * BS, pattern(2, BS))
    d.write(7 * BS, pattern(3, 4 * BS))            # covers both
    assert d.read(7 * BS, 4 * BS) == pattern(3, 4 * BS)
    d.write(9 * BS, pattern(4, BS))
    d.flush()
    want = bytearray(pattern(3, 4 * BS))
    want[2 * BS:3 * BS] = pattern(4, BS)
    assert d.read(7 * BS, 4 * BS) == want
    assert_consistent(d)


def test_new_vbas_wait_too_on_a_fresh_disk_and_after_a_snapshot(make_disk):
    d = make_disk(MiB)
    d.write(3 * BS, pattern(1, BS))                 # unmapped before: a new VBA
    assert d.read(3 * BS, BS) == pattern(1, BS)
    assert [e.allocated for e in d.block_status(0, MiB)] == [False, True, False]
    d.create_snapshot("s")
    d.write(3 * BS, pattern(2, BS))                 # the snapshot's: another new VBA
    d.write(3 * BS, pattern(3, BS))                 # ours now: rewritten in place
    assert d.read(3 * BS, BS) == pattern(3, BS)
    assert d.open_snapshot("s").read(3 * BS, BS) == pattern(1, BS)
    assert_consistent(d)


def test_trim_and_zero_of_recent_blocks(filled):
    d = filled
    d.write(10 * BS, pattern(1, BS))
    d.write(11 * BS, pattern(2, BS))
    d.trim(10 * BS, BS)
    d.zero(11 * BS, BS)
    assert d.read(10 * BS, 2 * BS) == bytes(2 * BS)
    d.write(11 * BS, pattern(3, BS))
    assert d.read(11 * BS, BS) == pattern(3, BS)
    d.flush()
    assert_consistent(d)


def test_snapshot_delete_and_revert_with_recent_blocks(filled):
    d = filled
    d.create_snapshot("a")
    d.write(1 * BS, pattern(1, BS))
    d.create_snapshot("b")
    d.write(1 * BS, pattern(2, BS))
    d.write(2 * BS, pattern(3, BS))
    d.delete_snapshot("a")
    assert d.read(BS, 2 * BS) == pattern(2, BS) + pattern(3, BS)
    d.write(2 * BS, pattern(4, BS))
    d.revert("b")
    assert d.read(BS, 2 * BS) == pattern(1, BS) + pattern(0, 4 * MiB)[2 * BS:3 * BS]
    assert_consistent(d)


def test_unflushed_recent_writes_are_not_visible_to_others_and_flush_makes_them_durable(filled):
    d = filled
    d.write(12 * BS, pattern(1, BS))
    assert read_in_child(d.path, 12 * BS, BS) == pattern(0, 4 * MiB)[12 * BS:13 * BS]
    d.flush()
    assert read_in_child(d.path, 12 * BS, BS) == pattern(1, BS)


def test_a_damaged_recent_block_is_refused(filled):
    d = filled
    d.write(13 * BS, pattern(1, BS))
    (pba, _csum), = d._recent.values()
    damage_data(d, pba, BS)
    for offset, length in ((13 * BS, BS), (13 * BS, 2 * BS)):
        with pytest.raises(ChecksumMismatch) as ei:
            d.read(offset, length)
        assert ei.value.errno == errno.EIO and "LBA 13 " in str(ei.value)


def test_close_commits_the_table(make_disk, disk_path):
    d = make_disk(MiB)
    d.write(0, pattern(0, MiB))
    d.flush()
    d.write(4 * BS, pattern(1, BS))
    d.close()
    with Disk.open(disk_path) as d2:
        assert d2.read(4 * BS, BS) == pattern(1, BS)
        assert_consistent(d2)


# ------------------------------------------------ new VBAs: the LBA table

def _after_snapshot(filled):
    d = filled
    d.create_snapshot("s")
    tree_before = list(d._lba.extents())
    writes = {b: pattern(200 + b, BS) for b in (3, 4, 5, 9, 700, 1023)}
    for b, data in writes.items():
        d.write(b * BS, data)
    return d, tree_before, writes


def test_first_writes_after_a_snapshot_leave_the_lba_tree_for_later(filled):
    d, tree_before, writes = _after_snapshot(filled)
    assert sorted(d._recent_lba) == sorted(writes)
    assert list(d._lba.extents()) == tree_before          # not changed yet
    for b, data in writes.items():
        assert d.read(b * BS, BS) == data                  # the one-block path
        assert d.read(b * BS + 3, 50) == data[3:53]
    d.write(4 * BS, pattern(1, BS))                        # ours now: keeps its new VBA
    writes[4] = pattern(1, BS)
    assert d.read(4 * BS, BS) == pattern(1, BS)
    assert d._recent_lba, "one-block reads and writes must not settle"
    want = _expect(pattern(0, 4 * MiB), writes)
    assert d.read(2 * BS, 8 * BS) == want[2 * BS:10 * BS]  # the general path settles
    assert not d._recent_lba
    # Settled as a punch and map per block would have left it: 3..5 joined.
    ext = [(s, n) for s, _v, n in d._lba.extents()]
    assert ext[:5] == [(0, 3), (3, 3), (6, 3), (9, 1), (10, 690)]
    assert d.read(0, 4 * MiB) == want
    assert d.open_snapshot("s").read(0, 4 * MiB) == pattern(0, 4 * MiB)
    assert_consistent(d)


@pytest.mark.parametrize("how", ["block_status", "multi_write", "trim", "zero", "snapshot", "checkpoint",
                                 "sub_block_write", "revert"])
def test_every_path_meets_the_lba_table(filled, how):
    d, _before, writes = _after_snapshot(filled)
    want = _expect(pattern(0, 4 * MiB), writes)
    if how == "block_status":
        assert [e.allocated for e in d.block_status(0, 4 * MiB)] == [True]
    elif how == "multi_write":
        d.write(4 * BS, pattern(7, 3 * BS))                # over table entries 4, 5 and block 6
        want[4 * BS:7 * BS] = pattern(7, 3 * BS)
    elif how == "trim":
        d.trim(3 * BS, 2 * BS)
        want[3 * BS:5 * BS] = bytes(2 * BS)
        assert [e.allocated for e in d.block_status(0, 8 * BS)] == [True, False, True]
    elif how == "zero":
        d.zero(5 * BS, BS)
        want[5 * BS:6 * BS] = bytes(BS)
    elif how == "snapshot":
        d.create_snapshot("t")
        assert d.open_snapshot("t").read(0, 4 * MiB) == want
    elif how == "checkpoint":
        d.checkpoint()
        assert not d._recent_lba and not d._recent
    elif how == "sub_block_write":
        d.write(9 * BS + 100, b"xyz")
        want[9 * BS + 100:9 * BS + 103] = b"xyz"
    elif how == "revert":
        d.revert("s")
        want = bytearray(pattern(0, 4 * MiB))
    assert d.read(0, 4 * MiB) == want
    assert d.open_snapshot("s").read(0, 4 * MiB) == pattern(0, 4 * MiB)
    assert_consistent(d)


def test_the_lba_table_is_redone_from_the_log_and_followed_by_readers(filled, disk_path):
    d, _before, writes = _after_snapshot(filled)
    d.flush()                                              # through the redo log: nothing settled
    assert d._recent_lba
    want = _expect(pattern(0, 4 * MiB), writes)
    # A reader beside the writer follows the log into its own table.
    assert read_in_child(d.path, 0, 4 * MiB) == bytes(want)
    for b in writes:
        assert read_in_child(d.path, b * BS, BS) == writes[b]
    r = Disk.open(d.path, readonly=True)
    try:
        assert r.read(0, 4 * MiB) == want and r.read(700 * BS, BS) == writes[700]
    finally:
        r.close()
