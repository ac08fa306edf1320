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
import shutil
import tempfile
import time

import pytest

from engine.accounting import assert_consistent
from engine.test_datastore import (  # noqa: F401 - collected here, on the RADOS store
    test_a_punched_range_reads_as_zeros_keeps_the_size_and_frees_space,
    test_closing_twice_is_harmless,
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


def test_after_a_failed_write_every_sync_fails(ceph, new_client, prefix):
    """A fenced client's writes fail in flight; no later sync may say they are durable."""
    victim = new_client()
    io = victim.open_ioctx(ceph.pool)
    s = RadosDataStore(io, prefix, object_size=64 * KiB)
    s.write(memoryview(pattern(1, 64 * KiB)), 0)
    s.sync()
    vceph.fence(new_client(), victim.get_addrs(), expire_seconds=600)
    s.write(memoryview(pattern(2, 64 * KiB)), 64 * KiB)
    with pytest.raises(OSError) as first:
        s.sync()
    assert first.value.errno == errno.ESHUTDOWN
    with pytest.raises(OSError):
        s.start_writeback(0, 1)
    with pytest.raises(OSError) as again:
        s.sync()
    assert again.value is first.value


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


def test_a_fenced_data_store_stops_the_disk(ceph, new_client, prefix, disk_dir):
    victim = new_client()
    io = victim.open_ioctx(ceph.pool)
    d = Disk.create(disk_dir, 4 * MiB, data_store=RadosDataStore(io, prefix, object_size=1 * MiB))
    d.write(0, pattern(1, 64 * KiB))
    d.flush()
    vceph.fence(new_client(), victim.get_addrs(), expire_seconds=600)
    d.write(64 * KiB, pattern(2, 64 * KiB))
    t = time.monotonic()
    with pytest.raises(StorageError):
        d.flush()
    with pytest.raises(DiskFailed):
        d.flush()
    assert time.monotonic() - t < 10
    d.close()
