"""``vdisk --ceph-conf FILE --ceph-id NAME COMMAND rados:POOL/NAME`` against the
real cluster: the disk commands, bad locations as one line and an exit code,
and NBD: serve, write and flush, a live snapshot over the control socket,
SIGKILL of the server, serve again from another client identity with
--break-lock, every flushed write and the snapshot there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from cli.util import one_error_line, run, run_proc, vdisk_cmd
from engine.util import pattern

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def rdisk(ceph, prefix):
    return f"rados:{ceph.pool}/{prefix}"


def vd(ceph, *args, client=None, input=None):
    extra = ["--ceph-id", client] if client else []
    return run("--ceph-conf", ceph.conf, *extra, *args, input=input)


def ok(r):
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r.stdout


def test_create_info_snapshots_verify_and_export_on_a_rados_disk(ceph, rdisk, tmp_path):
    assert "created " + rdisk in ok(vd(ceph, "create", rdisk, "--size", "64M"))
    info = json.loads(ok(vd(ceph, "info", rdisk, "--json")))
    assert info["path"] == rdisk and info["where"]["kind"] == "rados"
    assert info["where"]["pool"] == ceph.pool and info["where"]["conf"] == ceph.conf
    text = ok(vd(ceph, "info", rdisk))
    assert f"rados pool {ceph.pool}, image {rdisk.split('/')[1]}, cluster {info['where']['fsid']}" in text
    from vdisk import Disk
    from vdisk.location import parse
    with Disk.open(parse(rdisk, conf=ceph.conf)) as d:
        d.write(0, pattern(1, MiB))
    ok(vd(ceph, "snapshot", "create", rdisk, "one"))
    with Disk.open(parse(rdisk, conf=ceph.conf)) as d:
        d.write(0, pattern(2, 512 * KiB))
    ok(vd(ceph, "snapshot", "create", rdisk, "two"))
    listed = json.loads(ok(vd(ceph, "snapshot", "list", rdisk, "--json")))
    assert [s["name"] for s in listed] == ["one", "two"]
    assert listed[0]["exclusive_bytes"] == 512 * KiB
    ok(vd(ceph, "snapshot", "revert", rdisk, "one"))
    ok(vd(ceph, "snapshot", "delete", rdisk, "two"))
    assert "no problems found" in ok(vd(ceph, "verify", rdisk, "--data", client="verifier"))
    out = tmp_path / "out"
    out.mkdir()
    assert "verified" in ok(vd(ceph, "export", rdisk, out / "d.qcow2", "-O", "qcow2", "--verify"))
    assert "verified" in ok(vd(ceph, "export", rdisk, out / "chain", "--chain", "--verify"))
    assert sorted(os.listdir(out / "chain" / "snapshots")) == ["one.qcow2"]
    with Disk.open(parse(rdisk, conf=ceph.conf), readonly=True) as d:
        assert d.read(0, MiB) == pattern(1, MiB)


def test_bad_rados_locations_are_one_line_and_an_exit_code(ceph, rdisk, tmp_path):
    one_error_line(vd(ceph, "info", "rados:"), 2, "rados:POOL/NAME")
    one_error_line(vd(ceph, "info", "rados:vdisk"), 2, "rados:POOL/NAME")
    one_error_line(vd(ceph, "info", "rados:no-such-pool/x"), 3, "pool no-such-pool does not exist")
    one_error_line(vd(ceph, "info", rdisk + "-missing"), 3, "no disk")
    one_error_line(vd(ceph, "verify", rdisk + "-missing"), 3, "no disk")
    ok(vd(ceph, "create", rdisk, "--size", "1M"))
    one_error_line(vd(ceph, "create", rdisk, "--size", "1M"), 4, "already exists")
    dead = tmp_path / "dead.conf"
    with open(ceph.conf) as f:
        conf = f.read()
    import re
    dead.write_text(re.sub(r"mon_host = .*", "mon_host = 127.0.0.1:1", conf))
    r = run_proc("--ceph-conf", dead, "--ceph-timeout", "2", "info", rdisk, timeout=30)
    one_error_line(r, 10, "cannot reach the Ceph cluster")
    r = run_proc("info", rdisk, env={"CEPH_CONF": str(tmp_path / "none.conf")}, timeout=30)
    one_error_line(r, 3, "no Ceph configuration")
    one_error_line(vd(ceph, "serve", tmp_path, "--break-lock"), 2, "--break-lock")
    # receive and import take a rados: disk (tests/rados/test_replicate_rados.py,
    # test_convert_rados.py); bad input is still one line.
    one_error_line(vd(ceph, "receive", rdisk, input=b""), 8, "stream ended")
    one_error_line(vd(ceph, "import", tmp_path / "x.raw", rdisk + "-i"), 3, "x.raw")


class Server:
    """``vdisk serve`` of a rados disk as a subprocess, read from its --json events."""

    def __init__(self, ceph, disk, client, *args):
        self.proc = subprocess.Popen(vdisk_cmd("--ceph-conf", ceph.conf, "--ceph-id", client, "serve", disk,
                                               "--json", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"vdisk serve failed: {self.proc.stderr.read()}")
        self.event = json.loads(line)
        self.socket = self.event["socket"]

    def handle(self, export=""):
        import nbd
        h = nbd.NBD()
        h.set_export_name(export)
        h.connect_unix(self.socket)
        return h

    def kill_nbdkit(self):
        os.kill(self.event["pid"], signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


def test_nbd_serve_snapshot_live_kill_and_take_over_with_break_lock(ceph, rdisk):
    pytest.importorskip("nbd")
    ok(vd(ceph, "create", rdisk, "--size", "64M"))
    a = Server(ceph, rdisk, "serve-a")
    try:
        assert a.event["disk"] == rdisk
        h = a.handle()
        h.pwrite(pattern(1, MiB), 0)
        h.flush()
        ok(vd(ceph, "snapshot", "create", rdisk, "live"))      # through the control socket
        assert a.socket.startswith(os.path.dirname(a.socket))
        h.pwrite(pattern(2, 256 * KiB), 4 * MiB)
        h.pwrite(pattern(3, 4096), 0)
        h.flush()
        h.pwrite(pattern(4, 4096), 8 * MiB)                     # unflushed: may be lost
        a.kill_nbdkit()
    finally:
        a.stop()
    r = run_proc("--ceph-conf", ceph.conf, "--ceph-id", "serve-b", "serve", rdisk, timeout=60)
    one_error_line(r, 5, "is in use", "--break-lock")
    b = Server(ceph, rdisk, "serve-b", "--break-lock")
    try:
        assert [e["name"] for e in b.event["exports"]] == ["", "live"]
        h = b.handle()
        assert h.pread(4096, 0) == pattern(3, 4096)
        assert h.pread(MiB - 4096, 4096) == pattern(1, MiB)[4096:]
        assert h.pread(256 * KiB, 4 * MiB) == pattern(2, 256 * KiB)
        assert h.pread(4096, 8 * MiB) in (bytes(4096), pattern(4, 4096))
        snap = b.handle("live")
        assert snap.pread(MiB, 0) == pattern(1, MiB)
        assert snap.pread(4096, 4 * MiB) == bytes(4096)
        h.shutdown()
        snap.shutdown()
    finally:
        b.stop()
    assert "no problems found" in ok(vd(ceph, "verify", rdisk, "--data"))


def test_mount_a_rados_disk_write_snapshot_live_and_umount(ceph, rdisk, tmp_path):
    if not os.path.exists("/dev/fuse") and not os.environ.get("CI"):
        pytest.skip("/dev/fuse is missing")
    ok(vd(ceph, "create", rdisk, "--size", "16M"))
    mp = str(tmp_path / "mnt")
    ok(vd(ceph, "mount", rdisk, mp, "--mkdir"))
    try:
        with open(os.path.join(mp, "disk.img"), "r+b") as f:
            f.write(pattern(7, 64 * KiB))
            f.flush()
            os.fsync(f.fileno())
        ok(vd(ceph, "snapshot", "create", rdisk, "m1"))       # through the mount's control socket
        with open(os.path.join(mp, "snapshots", "m1.img"), "rb") as f:
            assert f.read(64 * KiB) == pattern(7, 64 * KiB)
    finally:
        r = run("umount", mp)
    assert r.exit_code == 0, r.stderr
    assert "no problems found" in ok(vd(ceph, "verify", rdisk, "--data"))
    from vdisk import Disk
    from vdisk.location import parse
    with Disk.open(parse(rdisk, conf=ceph.conf), readonly=True) as d:
        assert d.read(0, 64 * KiB) == pattern(7, 64 * KiB)
