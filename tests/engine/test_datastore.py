"""The data store contract (vdisk/datastore.py), held by every store alike.

The same tests run on the local sparse file and on the in-memory twin, so a
test that uses the memory store learns what the file would do; then the
engine runs on a memory store, which shows it reaches the PBA space only
through the interface (the container's data file stays empty).
"""

from __future__ import annotations

import errno
import os

import pytest

from vdisk import Disk
from vdisk.datastore_file import FileDataStore
from vdisk.datastore_memory import MemoryDataStore
from vdisk.errors import DiskFailed, NoSpace, StorageError

from .accounting import assert_consistent
from .util import pattern

KiB = 1 << 10
BS = 4096


@pytest.fixture(params=["file", "memory"])
def store(request, scratch):
    if request.param == "file":
        path = os.path.join(scratch, "data")
        open(path, "wb").close()
        s = FileDataStore(path, readonly=False)
    else:
        s = MemoryDataStore()
    yield s
    s.close()


def test_what_was_written_reads_back_and_reads_past_the_end_are_short(store):
    data = pattern(1, 3 * BS)
    store.write(memoryview(data), 5 * BS)
    assert store.read(3 * BS, 5 * BS) == data
    buf = bytearray(2 * BS)
    assert store.readinto(memoryview(buf), 6 * BS) == 2 * BS and bytes(buf) == data[BS:]
    assert store.read(4 * BS, 7 * BS) == data[2 * BS:]                # short: one block left
    assert store.readinto(memoryview(bytearray(BS)), 8 * BS) == 0
    assert store.read(BS, 0) == bytes(BS)                             # never written: zeros
    assert store.size() == 8 * BS


def _into(store, ranges):
    """``read_many_into`` of ``ranges``, each into a buffer of its own: ``wait`` -> the bytes each got."""
    views = [memoryview(bytearray(n)) for n, _ in ranges]
    wait = store.read_many_into(ranges, views)

    def got():
        return [bytes(v[:k]) for v, k in zip(views, wait())]
    return got


def test_many_ranges_read_at_once_are_what_each_read_alone_returns(store):
    store.write(memoryview(pattern(20, 200 * KiB)), 60 * KiB)          # across 64 KiB boundaries
    store.write(memoryview(pattern(21, 3 * BS)), 1024 * KiB)
    store.sync()
    ranges = [(200 * KiB, 60 * KiB), (BS, 0), (8 * KiB, 120 * KiB), (0, 64 * KiB),   # all, a hole, a middle, nothing
              (5 * BS, 1024 * KiB), (BS, 2048 * KiB), (3 * BS, 1024 * KiB)]          # short at the end, past it, again
    wait = _into(store, ranges)
    got = wait()
    assert got == [store.read(length, offset) for length, offset in ranges]
    assert got == [pattern(20, 200 * KiB), bytes(BS), pattern(20, 200 * KiB)[60 * KiB:68 * KiB], b"",
                   pattern(21, 3 * BS), b"", pattern(21, 3 * BS)]
    assert wait() == got                                              # asked twice: the same
    assert store.read_many_into([], [])() == []


def test_a_write_or_punch_after_read_many_does_not_change_what_it_returns(store):
    # The rule that lets the engine wait for reads outside its lock
    # (vdisk/datastore.py, "Reads in flight"): many ranges in flight, then
    # every one of them overwritten or punched at once.
    old = pattern(22, 256 * KiB)
    store.write(memoryview(old), 0)
    store.sync()
    ranges = [(BS, i * BS) for i in range(0, 64, 2)]
    wait = _into(store, ranges)
    ones = [_into(store, [(BS, 3 * BS)]), _into(store, [(BS, 40 * BS)])]   # one range: may be deferred
    store.write(memoryview(pattern(23, 128 * KiB)), 0)
    store.punch(128 * KiB, 128 * KiB)
    assert wait() == [old[o:o + n] for n, o in ranges]
    assert [w() for w in ones] == [[old[3 * BS:4 * BS]], [old[40 * BS:41 * BS]]]
    assert store.read(256 * KiB, 0) == pattern(23, 128 * KiB) + bytes(128 * KiB)


def test_ranges_read_into_buffers_are_what_each_read_alone_returns_and_later_writes_do_not_change(store):
    # read_many_into, the engine's read (issue 13): each range lands in its
    # own view of one buffer; the rule of read_many holds for what lands.
    old = pattern(24, 256 * KiB)
    store.write(memoryview(old), 0)
    store.sync()
    ranges = [(8 * KiB, 16 * KiB), (BS, 0), (12 * KiB, 250 * KiB), (BS, 300 * KiB)]   # one, another, short, past the end
    buf = memoryview(bytearray(b"\x77" * sum(n for n, _ in ranges)))
    views, at = [], 0
    for n, _ in ranges:
        views.append(buf[at:at + n])
        at += n
    wait = store.read_many_into(ranges, views)
    store.write(memoryview(pattern(25, 256 * KiB)), 0)
    store.punch(0, 64 * KiB)
    assert wait() == [8 * KiB, BS, 6 * KiB, 0]
    assert bytes(views[0]) == old[16 * KiB:24 * KiB] and bytes(views[1]) == old[:BS]
    assert bytes(views[2][:6 * KiB]) == old[250 * KiB:]
    one = memoryview(bytearray(BS))
    assert store.read_many_into([(BS, 70 * KiB)], [one])() == [BS]
    assert bytes(one) == pattern(25, 256 * KiB)[70 * KiB:74 * KiB]
    assert store.read_many_into([], [])() == []


def test_a_punched_range_reads_as_zeros_keeps_the_size_and_frees_space(store):
    store.write(memoryview(pattern(2, 256 * KiB)), 0)
    store.sync()
    before = store.allocated_bytes()
    assert store.punch(64 * KiB, 128 * KiB)
    assert store.read(128 * KiB, 64 * KiB) == bytes(128 * KiB)
    assert store.read(64 * KiB, 0) == pattern(2, 64 * KiB)
    assert store.size() == 256 * KiB
    assert store.allocated_bytes() <= before - 128 * KiB


def test_seek_finds_data_and_holes_as_compact_needs_them(store):
    store.write(memoryview(pattern(3, 64 * KiB)), 0)
    store.write(memoryview(pattern(4, 64 * KiB)), 1024 * KiB)
    store.punch(0, 64 * KiB)
    assert store.seek_data(0) == 1024 * KiB
    assert store.seek_hole(1024 * KiB) == 1088 * KiB                 # the end counts as a hole
    assert store.seek_data(1088 * KiB) is None


def test_write_back_and_sync_succeed_on_a_healthy_store(store):
    store.write(memoryview(pattern(5, 512 * KiB)), 0)
    store.start_writeback(0, 512 * KiB)
    store.sync()
    assert store.read(512 * KiB, 0) == pattern(5, 512 * KiB)


def test_closing_twice_is_harmless(store):
    store.close()
    store.close()


def test_the_memory_store_keeps_only_synced_writes_over_a_crash():
    s = MemoryDataStore()
    s.write(memoryview(pattern(6, BS)), 0)
    s.sync()
    s.write(memoryview(pattern(7, BS)), BS)
    s.write(memoryview(bytes(BS)), 0)
    after = s.crash()
    assert after.read(2 * BS, 0) == pattern(6, BS) and s.syncs == 1
    assert s.reopen().read(2 * BS, 0) == bytes(BS) + pattern(7, BS)


# ----------------------------------------------------------- the engine on a memory store

@pytest.fixture
def mem_disk(disk_path):
    store = MemoryDataStore()
    d = Disk.create(disk_path, 8 << 20, data_store=store)
    yield d, store
    d.close()


def test_the_engine_reads_and_writes_only_through_its_store(mem_disk, disk_path):
    d, store = mem_disk
    d.write(0, pattern(10, 64 * KiB))
    d.write(100, b"hello")                                            # a sub-block write
    d.flush()
    assert store.syncs >= 1 and store.size() > 0
    assert os.path.getsize(os.path.join(disk_path, "data")) == 0
    want = bytearray(pattern(10, 64 * KiB))
    want[100:105] = b"hello"
    assert d.read(0, 64 * KiB) == want
    assert d.info()["file_bytes"] == store.allocated_bytes()
    d.close()
    with Disk.open(disk_path, data_store=store.reopen()) as again:
        assert again.read(0, 64 * KiB) == want
        assert_consistent(again)


def test_snapshots_delete_and_compact_on_a_memory_store(mem_disk):
    d, store = mem_disk
    d.write(0, pattern(11, 1 << 20))
    d.create_snapshot("s")
    for i in range(0, 256, 2):                                        # scattered single blocks
        d.write(i * BS, pattern(100 + i, BS))
    d.flush()
    with d.open_snapshot("s") as snap:
        assert snap.read(0, 1 << 20) == pattern(11, 1 << 20)
    freed = d.delete_snapshot("s")
    assert freed == 128
    held = store.allocated_bytes()
    # Single blocks are left to compact: the 128 the deletion freed, and the
    # redo log's (its group and reserved block, freed by the deletion's commit).
    punched = d.compact()
    assert 128 * BS <= punched <= 130 * BS
    assert store.allocated_bytes() == held - punched
    assert d.read(2 * BS, BS) == pattern(102, BS) and d.read(BS, BS) == pattern(11, 1 << 20)[BS:2 * BS]
    assert_consistent(d)


def test_a_failed_sync_of_the_store_stops_the_disk(mem_disk):
    d, store = mem_disk
    d.write(0, pattern(12, BS))
    store.fail["sync"] = errno.EIO
    with pytest.raises(StorageError):
        d.flush()
    with pytest.raises(DiskFailed):
        d.flush()


def test_a_failed_store_write_fails_only_that_write(mem_disk):
    d, store = mem_disk
    d.write(0, pattern(13, BS))
    store.fail["write"] = errno.ENOSPC
    with pytest.raises(NoSpace):
        d.write(BS, pattern(14, BS))
    d.flush()
    assert d.read(0, 2 * BS) == pattern(13, BS) + bytes(BS)
