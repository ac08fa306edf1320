"""NBD features and bad requests, driven through libnbd's Python API."""

from __future__ import annotations

import os
import signal

import pytest

from nbd_util import MiB, import_nbd, pattern, run_vdisk

nbd = import_nbd()
SIZE = 64 * MiB
HOLE, ZERO = 1, 2   # base:allocation flags


def _status(h, offset, length):
    """[(offset, length, flags)] of base:allocation for a range."""
    out = []

    def cb(ctx, off, entries, err):
        pos = off
        for i in range(0, len(entries), 2):
            out.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        return 0

    end = offset + length
    while offset < end:
        before = len(out)
        h.block_status(end - offset, offset, cb)
        if len(out) == before:
            raise AssertionError("server returned no extents")
        offset = out[-1][0] + out[-1][1]
    return out


def _flags_at(h, offset):
    return _status(h, offset, 1)[0][2]


def _nbdkit_pid(served):
    line = served.banner[0]
    return int(line.split("nbdkit PID ")[1].split(")")[0])


def _kill_nbdkit(served):
    """Crash the server (SIGKILL: no final flush) and wait for vdisk serve to notice."""
    os.kill(_nbdkit_pid(served), signal.SIGKILL)
    served.proc.wait(timeout=30)


def _disk_bytes(path, offset, length):
    from vdisk import Disk
    with Disk.open(path, readonly=True) as d:
        return d.read(offset, length)


def test_block_size_hints_and_features(disk, serve):
    s = serve(disk)
    h = s.connect()
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
    assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
    assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_fast_zero()
    assert h.can_multi_conn() and h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    assert not h.is_read_only() and not h.is_rotational()
    h.shutdown()


def test_trim_zero_and_block_status_are_truthful(disk, serve):
    s = serve(disk)
    h = s.connect()
    assert _status(h, 0, SIZE) == [(0, SIZE, HOLE | ZERO)]
    h.pwrite(pattern(1, 1 * MiB), 0)
    assert _status(h, 0, 2 * MiB) == [(0, 1 * MiB, 0), (1 * MiB, 1 * MiB, HOLE | ZERO)]
    h.trim(64 * 1024, 128 * 1024)
    assert bytes(h.pread(64 * 1024, 128 * 1024)) == bytes(64 * 1024)
    assert _flags_at(h, 128 * 1024) == HOLE | ZERO
    # Write zeroes may unmap (the default) ...
    h.zero(64 * 1024, 512 * 1024)
    assert _flags_at(h, 512 * 1024) == HOLE | ZERO
    # ... and fast-zero is honoured because unmapping is cheap ...
    h.zero(64 * 1024, 256 * 1024, nbd.CMD_FLAG_FAST_ZERO)
    assert bytes(h.pread(64 * 1024, 256 * 1024)) == bytes(64 * 1024)
    # ... but NO_HOLE must leave data allocated, so it writes, and refuses to be "fast".
    h.zero(64 * 1024, 768 * 1024, nbd.CMD_FLAG_NO_HOLE)
    assert bytes(h.pread(64 * 1024, 768 * 1024)) == bytes(64 * 1024)
    assert _flags_at(h, 800 * 1024) == 0
    with pytest.raises(nbd.Error) as e:
        h.zero(4096, 3 * MiB, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
    assert e.value.errno == "ENOTSUP"
    # Misaligned trim and zero: edges become zeros, neighbours keep their bytes.
    h.pwrite(pattern(2, 16384), 2 * MiB)
    h.trim(1000, 2 * MiB + 100)          # (count, offset), inside one block
    h.zero(3000, 2 * MiB + 9000)         # straddles two blocks
    got = bytes(h.pread(16384, 2 * MiB))
    want = bytearray(pattern(2, 16384))
    want[100:1100] = bytes(1000)
    want[9000:12000] = bytes(3000)
    assert got == bytes(want)
    h.shutdown()


def test_fua_and_flush_survive_a_server_crash(disk, serve):
    # Each phase ends in a crash right after the one request that must be
    # durable, so no later flush can cover for it.
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(1, 8192), 0)                              # acknowledged, not flushed
    h.pwrite(pattern(2, 8192), 1 * MiB, nbd.CMD_FLAG_FUA)       # durable on reply (so is the first)
    _kill_nbdkit(s)
    assert _disk_bytes(disk, 0, 8192) == pattern(1, 8192)
    assert _disk_bytes(disk, 1 * MiB, 8192) == pattern(2, 8192)
    s = serve(disk)
    h = s.connect()
    h.trim(4096, 4096, nbd.CMD_FLAG_FUA)
    _kill_nbdkit(s)
    assert _disk_bytes(disk, 0, 8192) == pattern(1, 4096) + bytes(4096)
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(3, 8192), 2 * MiB)
    h.zero(8192, 1 * MiB)
    h.flush()
    _kill_nbdkit(s)
    assert _disk_bytes(disk, 1 * MiB, 8192) == bytes(8192)
    assert _disk_bytes(disk, 2 * MiB, 8192) == pattern(3, 8192)


def test_multi_conn_flush_on_one_connection_covers_the_others(disk, serve):
    s = serve(disk)
    a, b = s.connect(), s.connect()
    a.pwrite(pattern(7, 65536), 5 * MiB)
    assert bytes(b.pread(65536, 5 * MiB)) == pattern(7, 65536)   # visible at once
    b.flush()
    _kill_nbdkit(s)
    assert _disk_bytes(disk, 5 * MiB, 65536) == pattern(7, 65536)


def test_a_client_dropping_mid_write_loses_nothing_flushed(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(11, 1 * MiB), 0)
    h.flush()
    # Another client sends a 16 MiB write header and part of its payload, then vanishes.
    import socket
    import struct
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(s.socket)
    NBD_MAGIC, IHAVEOPT, OPT_EXPORT_NAME = 0x4e42444d41474943, 0x49484156454F5054, 1
    hello = raw.recv(18)
    assert struct.unpack(">QQH", hello)[0] == NBD_MAGIC
    raw.sendall(struct.pack(">I", 1))                       # fixed newstyle
    raw.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 0))
    reply = b""
    while len(reply) < 10:
        reply += raw.recv(10 - len(reply))
    raw.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 16 * MiB))   # NBD_CMD_WRITE at 0
    raw.sendall(pattern(99, 5 * MiB))
    raw.close()
    # The server goes on; the flushed data is intact, the half-sent write never happened.
    assert bytes(h.pread(1 * MiB, 0)) == pattern(11, 1 * MiB)
    h.shutdown()
    assert s.stop() == 0
    assert _disk_bytes(disk, 0, 1 * MiB) == pattern(11, 1 * MiB)


def test_bad_requests_get_clean_errors_and_the_server_keeps_serving(disk, serve):
    run_vdisk("snapshot", "create", disk, "snap")
    s = serve(disk)
    h = s.connect()
    h.set_strict_mode(0)   # send what libnbd would refuse, to see the server's answer
    h.pwrite(pattern(5, 4096), 0)
    # Past the end: EINVAL, or ENOSPC for writes (the NBD spec allows either).
    for op, errs in ((lambda: h.pread(4096, SIZE - 100), {"EINVAL"}),
                     (lambda: h.pwrite(b"x" * 200, SIZE - 100), {"EINVAL", "ENOSPC"}),
                     (lambda: h.trim(8192, SIZE), {"EINVAL", "ENOSPC"}),
                     (lambda: h.zero(4096, SIZE), {"EINVAL", "ENOSPC"})):
        with pytest.raises(nbd.Error) as e:
            op()
        assert e.value.errno in errs
    for op in (lambda: h.pread(40 * MiB, 0), lambda: h.pwrite(bytes(40 * MiB), 0)):
        with pytest.raises(nbd.Error) as e:
            op()
        assert e.value.errno == "EINVAL"
    # Misaligned requests are valid (minimum block size 1) and exact.
    h.pwrite(b"abcde", 4093)
    assert bytes(h.pread(10, 4090)) == pattern(5, 4096)[4090:4093] + b"abcde" + bytes(2)
    # Writes of any kind to a snapshot export are refused; the snapshot is unchanged.
    snap = s.connect("snap")
    snap.set_strict_mode(0)
    assert snap.is_read_only()
    for op in (lambda: snap.pwrite(b"y" * 4096, 0), lambda: snap.trim(4096, 0),
               lambda: snap.zero(4096, 0)):
        with pytest.raises(nbd.Error) as e:
            op()
        assert e.value.errno == "EPERM"
    with pytest.raises(nbd.Error):
        snap.flush()
    assert bytes(snap.pread(4096, 0)) == bytes(4096)
    snap.shutdown()
    # Unknown export names are refused at connection time.
    with pytest.raises(nbd.Error):
        s.connect("no-such-snapshot")
    with pytest.raises(nbd.Error):
        s.connect("../../etc/passwd")
    # After all that the same connection still works and nothing was lost.
    assert bytes(h.pread(4093, 0)) == pattern(5, 4096)[:4093]
    h.shutdown()


def test_export_listing_and_new_snapshots_without_restart(disk, serve):
    s = serve(disk)
    h = s.connect()
    h.pwrite(pattern(21, 4096), 0)
    h.shutdown()
    run_vdisk("snapshot", "create", disk, "live")
    lister = nbd.NBD()
    lister.set_opt_mode(True)
    lister.connect_unix(s.socket)
    names = []
    lister.opt_list(lambda name, desc: names.append((name, desc)) or 0)
    lister.opt_abort()
    assert [n for n, _ in names] == ["", "live"]
    assert "snapshot live taken" in names[1][1]
    snap = s.connect("live")
    assert bytes(snap.pread(4096, 0)) == pattern(21, 4096)
    assert _status(snap, 0, 8192) == [(0, 4096, 0), (4096, 4096, HOLE | ZERO)]
    snap.shutdown()
