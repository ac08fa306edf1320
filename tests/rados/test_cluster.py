"""The RADOS primitives the stores stand on, proven on the real cluster.

Each test is one promise of librados that vdisk's RADOS stores or its
fencing rely on: if Ceph (or Debian's build of it) ever stops keeping one,
this file says which, before a store test fails in a puzzling way.
"""

from __future__ import annotations

import errno
import threading
import time

import pytest
import rados

from vdisk import ceph as vceph
from vdisk.errors import Busy


def write_op(io, oid, build):
    op = io.create_write_op()
    try:
        build(op)
        io.operate_write_op(op, oid)
    finally:
        op.release()


def omap(io, oid):
    op = io.create_read_op()
    try:
        it, _ = io.get_omap_vals(op, "", "", 1000)
        io.operate_read_op(op, oid)
        return dict(it)
    finally:
        op.release()


def test_cluster_start_is_idempotent(ceph):
    pids = ceph.status()["mon"], ceph.status()["osd"]
    t = time.monotonic()
    ceph.start()
    assert time.monotonic() - t < 2
    assert (ceph.status()["mon"], ceph.status()["osd"]) == pids
    assert ceph.status()["health"] in ("HEALTH_OK", "HEALTH_WARN")


def test_write_and_read_an_object(ioctx, prefix):
    ioctx.write_full(f"{prefix}.a", b"hello")
    ioctx.write(f"{prefix}.a", b"J", 0)
    assert ioctx.read(f"{prefix}.a") == b"Jello"
    assert ioctx.read(f"{prefix}.a", 10, 3) == b"lo"           # short at the end, as pread
    with pytest.raises(rados.ObjectNotFound):
        ioctx.read(f"{prefix}.missing")


def test_write_op_sets_omap_and_data_at_once(ioctx, prefix):
    oid = f"{prefix}.h"

    def first(op):
        ioctx.set_omap(op, ("commit",), (b"0000000000000001",))
        op.write_full(b"v1")
    write_op(ioctx, oid, first)
    assert ioctx.read(oid) == b"v1" and omap(ioctx, oid) == {"commit": b"0000000000000001"}

    def stale(op):                      # expects commit 0: must change nothing
        op.omap_cmp("commit", "0000000000000000", rados.LIBRADOS_CMPXATTR_OP_EQ)
        ioctx.set_omap(op, ("commit", "other"), (b"0000000000000002", b"x"))
        op.write_full(b"v2")
    with pytest.raises(rados.OSError) as e:
        write_op(ioctx, oid, stale)
    assert e.value.errno == errno.ECANCELED
    assert ioctx.read(oid) == b"v1" and omap(ioctx, oid) == {"commit": b"0000000000000001"}

    def current(op):
        op.omap_cmp("commit", "0000000000000001", rados.LIBRADOS_CMPXATTR_OP_EQ)
        ioctx.set_omap(op, ("commit",), (b"0000000000000002",))
        ioctx.remove_omap_keys(op, ("nothing-here",))
        op.write_full(b"v2")
    write_op(ioctx, oid, current)
    assert ioctx.read(oid) == b"v2" and omap(ioctx, oid) == {"commit": b"0000000000000002"}


def test_aio_writes_complete_with_their_results(ioctx, prefix):
    done = []
    comps = [ioctx.aio_write(f"{prefix}.{i}", bytes([i]) * 65536, 0, oncomplete=lambda c: done.append(c))
             for i in range(32)]
    for c in comps:
        c.wait_for_complete()
        assert c.get_return_value() == 0
    # wait_for_complete may return before the callback ran: a store that
    # counts writes in flight must count them in the callback, as
    # RadosDataStore does, not after the wait.
    until = time.monotonic() + 10
    while len(done) < 32 and time.monotonic() < until:
        time.sleep(0.01)
    assert len(done) == 32
    assert all(ioctx.read(f"{prefix}.{i}", 65536) == bytes([i]) * 65536 for i in range(32))
    bad = ioctx.aio_write(f"{prefix}.big", b"x", 1 << 40)          # past osd_max_object_size
    bad.wait_for_complete()
    assert bad.get_return_value() == -errno.EFBIG


def test_exclusive_lock_refuses_a_second_client_and_names_the_holder(ioctx, prefix, new_client, ceph):
    oid = f"{prefix}.header"
    ioctx.write_full(oid, b"")
    vceph.lock_exclusive(ioctx, oid, "cookie-1", "host-a pid 1")
    other = new_client().open_ioctx(ceph.pool)
    with pytest.raises(rados.ObjectBusy):
        other.lock_exclusive(oid, vceph.LOCK_NAME, "cookie-2")
    with pytest.raises(Busy, match="host-a pid 1"):
        vceph.lock_exclusive(other, oid, "cookie-2")
    [holder] = vceph.lockers(other, oid)
    assert holder.cookie == "cookie-1" and holder.description == "host-a pid 1"
    assert holder.entity.startswith("client.") and holder.address.startswith("127.0.0.1:")

    guard = vceph.lock_guard("cookie-1")
    write_op(ioctx, oid, lambda op: (guard(op), op.write_full(b"by the holder")))
    with pytest.raises(rados.OSError) as e:                        # the lock asserts per op
        write_op(other, oid, lambda op: (vceph.lock_guard("cookie-2")(op), op.write_full(b"intruder")))
    assert e.value.errno == errno.EBUSY
    assert ioctx.read(oid) == b"by the holder"
    vceph.unlock(ioctx, oid, "cookie-1")
    assert vceph.lockers(other, oid) == []
    other.close()


def test_blocklisted_client_cannot_write(ioctx, prefix, new_client, ceph):
    victim = new_client()
    vio = victim.open_ioctx(ceph.pool)
    oid = f"{prefix}.fenced"
    vio.write_full(oid, b"before")
    vceph.lock_exclusive(vio, oid, "victim")
    [holder] = vceph.lockers(ioctx, oid)
    assert holder.address == victim.get_addrs()
    # Fenced and broken by one client, as vdisk's take_over does: its ops
    # after the fence carry the new osdmap epoch, so the OSD takes that map
    # before the break, and refuses the victim from then on. (Broken by
    # another client with an older map, the OSD may not have it yet, and the
    # victim's next write can still land: the CI failure of 2026-12-02.)
    breaker = new_client()
    t = time.monotonic()
    vceph.fence(breaker, holder.address, expire_seconds=600)
    fence_s = time.monotonic() - t
    bio = breaker.open_ioctx(ceph.pool)
    vceph.break_lock(bio, oid, holder)
    assert vceph.lockers(ioctx, oid) == []
    with pytest.raises(rados.Error) as e:
        vio.write_full(oid, b"after")
    assert vceph.is_fenced_error(e.value), e.value
    comp = vio.aio_write(oid, b"late", 0)
    comp.wait_for_complete()
    assert comp.get_return_value() == -errno.ESHUTDOWN
    assert ioctx.read(oid) == b"before"
    assert fence_s < 10


def test_osd_restart_while_a_client_waits_loses_nothing(ceph, prefix, new_client):
    # A client without op timeouts waits through the restart, as a disk's I/O must.
    r = vceph.connect(ceph.conf, timeout=0)
    io = r.open_ioctx(ceph.pool)
    try:
        io.write_full(f"{prefix}.before", b"b" * 4096)
        stopped = threading.Event()
        result = {}

        def writer():
            stopped.wait()
            result["rc"] = io.write_full(f"{prefix}.during", b"d" * 4096)
        t = threading.Thread(target=writer)
        t.start()
        ceph.stop_osd()
        stopped.set()
        time.sleep(1)
        assert t.is_alive()                     # waiting for the OSD, not failed
        ceph.start_osd()
        t.join(60)
        assert not t.is_alive() and result["rc"] is None or result["rc"] == 0
        assert io.read(f"{prefix}.before", 8192) == b"b" * 4096
        assert io.read(f"{prefix}.during", 8192) == b"d" * 4096
    finally:
        io.close()
        r.shutdown()
