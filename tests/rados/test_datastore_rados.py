"""The data store contract on RADOS (vdisk/datastore_rados.py).

The contract tests of tests/engine/test_datastore.py run here unchanged on a
:class:`RadosDataStore` (with 64 KiB objects, so their ranges cross object
boundaries and whole objects get punched); then what only RADOS has: many
writes in flight, a sticky failure after the client is fenced, a reader
beside the writer, and the engine on a RADOS data store.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import threading
import time

import pytest

from engine.accounting import assert_consistent
from engine.test_datastore import (  # noqa: F401 - collected here, on the RADOS store
    test_a_punched_range_reads_as_zeros_keeps_the_size_and_frees_space,
    test_a_write_or_punch_after_read_many_does_not_change_what_it_returns,
    test_closing_twice_is_harmless,
    test_many_ranges_read_at_once_are_what_each_read_alone_returns,
    test_ranges_read_into_buffers_are_what_each_read_alone_returns_and_later_writes_do_not_change,
    test_seek_finds_data_and_holes_as_compact_needs_them,
    test_what_was_written_reads_back_and_reads_past_the_end_are_short,
    test_write_back_and_sync_succeed_on_a_healthy_store,
)
from engine.util import pattern
from vdisk import Disk
from vdisk import ceph as vceph
from vdisk.datastore_rados import RadosDataStore
from vdisk.errors import DiskFailed, StorageError

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def store(ioctx, prefix):
    s = RadosDataStore(ioctx, prefix, object_size=64 * KiB)
    yield s
    s.close()


def test_object_size_is_kept_by_the_store_not_the_opener(ioctx, prefix):
    s = RadosDataStore(ioctx, prefix, object_size=128 * KiB)
    s.write(memoryview(pattern(1, 300 * KiB)), 10 * KiB)
    s.sync()
    s.close()
    again = RadosDataStore(ioctx, prefix, object_size=4 * MiB)
    assert again.object_size == 128 * KiB and again.size() == 310 * KiB
    assert again.read(300 * KiB, 10 * KiB) == pattern(1, 300 * KiB)
    assert ioctx.stat(f"{prefix}.data.{2:016x}")[0] == 310 * KiB - 256 * KiB
    again.remove()
    with pytest.raises(OSError) as e:
        RadosDataStore(ioctx, prefix, readonly=True)
    assert e.value.errno == errno.ENOENT


def test_many_writes_in_flight_all_land_and_read_back_before_the_sync(ioctx, prefix):
    s = RadosDataStore(ioctx, prefix, object_size=256 * KiB, max_in_flight=8)
    for i in range(200):
        s.write(memoryview(pattern(i, 4 * KiB)), i * 12 * KiB)
    assert s.read(4 * KiB, 199 * 12 * KiB) == pattern(199, 4 * KiB)    # read-your-writes
    s.sync()
    other = RadosDataStore(ioctx, prefix, readonly=True)
    assert all(other.read(4 * KiB, i * 12 * KiB) == pattern(i, 4 * KiB) for i in range(200))
    assert other.size() == 199 * 12 * KiB + 4 * KiB
    s.close()


def test_a_reader_opened_earlier_sees_what_the_writer_synced_later(ioctx, prefix):
    w = RadosDataStore(ioctx, prefix, object_size=64 * KiB)
    w.write(memoryview(pattern(1, 4 * KiB)), 0)
    w.sync()
    r = RadosDataStore(ioctx, prefix, readonly=True)
    w.write(memoryview(pattern(2, 8 * KiB)), 1 * MiB)
    w.sync()
    assert r.read(8 * KiB, 1 * MiB) == pattern(2, 8 * KiB)
    assert r.seek_data(64 * KiB) == 1 * MiB
    with pytest.raises(OSError) as e:
        r.write(memoryview(b"x"), 0)
    assert e.value.errno == errno.EROFS


def test_after_a_failed_write_every_sync_fails(ceph, new_client, fence_now, prefix):
    """A fenced client's writes fail in flight; no later sync may say they are durable."""
    victim = new_client()
    io = victim.open_ioctx(ceph.pool)
    s = RadosDataStore(io, prefix, object_size=64 * KiB)
    s.write(memoryview(pattern(1, 64 * KiB)), 0)
    s.sync()
    fence_now(victim.get_addrs())
    s.write(memoryview(pattern(2, 64 * KiB)), 64 * KiB)
    with pytest.raises(OSError) as first:
        s.sync()
    assert first.value.errno == errno.ESHUTDOWN
    with pytest.raises(OSError):
        s.start_writeback(0, 1)
    with pytest.raises(OSError) as again:
        s.sync()
    assert again.value is first.value


def test_a_remove_whose_data_objects_fail_keeps_the_map_and_removing_again_finishes(
        ceph, ioctx, new_client, fence_now, prefix):
    """The object map is what finds the data objects: it goes only after all of them."""
    w = RadosDataStore(ioctx, prefix, object_size=64 * KiB)
    w.write(memoryview(pattern(1, 256 * KiB)), 0)
    w.sync()
    w.close()
    victim = new_client()
    s = RadosDataStore(victim.open_ioctx(ceph.pool), prefix, create=False)
    fence_now(victim.get_addrs())
    with pytest.raises(OSError) as e:
        s.remove()                                  # every removal fails in flight
    assert e.value.errno == errno.ESHUTDOWN
    left = {o.key for o in ioctx.list_objects() if o.key.startswith(prefix + ".")}
    assert f"{prefix}.data.map" in left and len(left) == 5, left
    RadosDataStore(ioctx, prefix, create=False).remove()
    assert not any(o.key.startswith(prefix + ".") for o in ioctx.list_objects())


def test_seek_and_allocation_follow_whole_objects(store):
    store.write(memoryview(pattern(1, 64 * KiB)), 128 * KiB)          # object 2 only
    store.write(memoryview(pattern(2, 4 * KiB)), 300 * KiB)           # object 4
    assert store.seek_data(0) == 128 * KiB
    assert store.seek_hole(128 * KiB) == 192 * KiB
    assert store.seek_data(192 * KiB) == 256 * KiB
    assert store.seek_hole(256 * KiB) == 304 * KiB                   # the end
    assert store.allocated_bytes() == 2 * 64 * KiB
    store.punch(128 * KiB, 64 * KiB)
    assert store.allocated_bytes() == 64 * KiB and store.seek_data(0) == 256 * KiB
    store.sync()


def test_a_read_never_collected_does_not_hold_up_a_write(store):
    # A one-piece read is done by wait(); a write over it that comes first
    # does it instead, so a caller that drops its reads blocks nobody.
    store.write(memoryview(pattern(1, 128 * KiB)), 0)
    store.sync()
    dropped = [store.read_many([(4 * KiB, 0)]), store.read_many([(4 * KiB, 60 * KiB), (8 * KiB, 64 * KiB)])]
    later = store.read_many([(4 * KiB, 0)])
    t = time.monotonic()
    store.write(memoryview(pattern(2, 128 * KiB)), 0)
    store.punch(64 * KiB, 64 * KiB)
    store.sync()
    store.close()
    assert time.monotonic() - t < 10
    assert later() == [pattern(1, 4 * KiB)]
    assert dropped[1]() == [pattern(1, 64 * KiB)[60 * KiB:], pattern(1, 128 * KiB)[64 * KiB:72 * KiB]]


# ----------------------------------------------------------- the engine on a RADOS data store

@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="vdisk-rados-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield os.path.join(d, "disk")
    shutil.rmtree(d, ignore_errors=True)


def test_the_engine_runs_on_a_rados_data_store(ioctx, prefix, disk_dir):
    store = RadosDataStore(ioctx, prefix, object_size=1 * MiB)
    d = Disk.create(disk_dir, 16 * MiB, data_store=store)
    d.write(0, pattern(10, 4 * MiB))
    d.create_snapshot("s")
    for i in range(0, 512, 2):
        d.write(i * 4096, pattern(100 + i, 4096))
    d.flush()
    assert os.path.getsize(os.path.join(disk_dir, "data")) == 0
    with d.open_snapshot("s") as snap:
        assert snap.read(0, 4 * MiB) == pattern(10, 4 * MiB)
    assert d.delete_snapshot("s") == 256
    d.compact()
    assert_consistent(d)
    d.close()
    with Disk.open(disk_dir, data_store=RadosDataStore(ioctx, prefix)) as again:
        assert again.read(2 * 4096, 4096) == pattern(102, 4096)
        assert again.read(4096, 4096) == pattern(10, 4 * MiB)[4096:8192]
        assert_consistent(again)


def test_a_fenced_data_store_stops_the_disk(ceph, new_client, fence_now, prefix, disk_dir):
    victim = new_client()
    io = victim.open_ioctx(ceph.pool)
    d = Disk.create(disk_dir, 4 * MiB, data_store=RadosDataStore(io, prefix, object_size=1 * MiB))
    d.write(0, pattern(1, 64 * KiB))
    d.flush()
    fence_now(victim.get_addrs())
    d.write(64 * KiB, pattern(2, 64 * KiB))
    t = time.monotonic()
    with pytest.raises(StorageError):
        d.flush()
    with pytest.raises(DiskFailed):
        d.flush()
    assert time.monotonic() - t < 10
    d.close()


def test_reads_waiting_outside_the_lock_never_see_a_reused_block(ioctx, prefix, disk_dir):
    """The served disk's reads wait for the cluster outside the disk's lock
    (vdisk/reader.py ``_fetch``) while writes, flushes and full commits
    (which free the PBAs overwrites released) go on; a block such a read
    looked up may be freed and its PBA written again before the read
    lands. The data store's rule (a write over a read in flight waits for
    it) must make every read return a version the block really had, never
    a checksum failure.
    """
    bs, blocks, writes = 4096, 64, 4096
    store = RadosDataStore(ioctx, prefix, object_size=256 * KiB)
    d = Disk.create(disk_dir, 1 * MiB, data_store=store)

    def block(lba, version):
        return (lba.to_bytes(4, "little") + version.to_bytes(4, "little")) * (bs // 8)

    for lba in range(blocks):
        d.write(lba * bs, block(lba, 0))
    d.flush()
    stop, failures, reads = threading.Event(), [], [0]
    versions = [0] * blocks

    def reader(seed):
        rnd = random.Random(seed)
        while not stop.is_set():
            lba, n = rnd.randrange(blocks - 8), rnd.choice((1, 1, 3, 8))
            try:
                got = d.read(lba * bs, n * bs)
            except Exception as e:       # noqa: BLE001 - any failure is the finding
                failures.append(f"read {lba}+{n}: {type(e).__name__}: {e}")
                return
            for i in range(n):
                have = got[i * bs:(i + 1) * bs]
                v = int.from_bytes(have[4:8], "little")
                if have != block(lba + i, v) or v > versions[lba + i]:
                    failures.append(f"LBA {lba + i}: bytes of no version it had (version field {v})")
                    return
            reads[0] += 1

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    rnd = random.Random(16)
    try:
        for i in range(1, writes + 1):
            lba = rnd.randrange(blocks)
            versions[lba] = i                # before the write: a read may see it at once
            d.write(lba * bs, block(lba, i))
            if i % 32 == 0:
                d.checkpoint()               # a full commit frees the PBAs: they are reused next
            elif i % 8 == 0:
                d.flush()                    # through the redo log
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert reads[0] > 100
    # The allocator grows the PBA space 8 MiB at a time and only then
    # reuses freed blocks: 16 MiB written into 12 MiB means PBAs were reused.
    assert store.size() <= 12 * MiB < writes * bs
    assert_consistent(d)
    d.close()
