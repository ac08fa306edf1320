"""Online conversion: ``vdisk convert --online``, then ``vdisk serve`` converts
in the background while an NBD client reads and writes the disk.

The client's writes (flushed) must all be there at the end, and every
snapshot must equal its layer exactly - never holding a client write - with
the serving process killed (SIGKILL) once mid-way and the conversion resumed
by the next serve. Reads during the conversion see the chain's top image
under the client's writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import vdisk as vdisk_
from vdisk.convert.converter import record_of
from vdisk.convert.qemu import load_nbd

MiB = 1 << 20
SIZE = 160 * MiB


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def vdisk(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "vdisk.cli.main", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


class Serve:
    def __init__(self, disk, images: str):
        self.sock = os.path.join(disk, "nbd.sock")
        self.images = images
        self.proc = subprocess.Popen([sys.executable, "-m", "vdisk.cli.main", "serve", disk],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        pidfile = os.path.join(disk, "nbdkit.pid")
        while not (os.path.exists(self.sock) and os.path.exists(pidfile)):
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "vdisk serve did not start"
            time.sleep(0.02)
        self.pid = int(open(pidfile).read())
        nbd = load_nbd()
        self.h = nbd.NBD()
        self.h.connect_unix(self.sock)

    def kill(self):
        """SIGKILL the process that holds the disk (nbdkit), as a crash would."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        # Its qemu-nbd servers (the origin, the layer being read) go with it.
        wait_until(lambda: not qemu_nbd_of(self.images), "a qemu-nbd outlived the killed server", 10)

    def stop(self):
        self.h.shutdown()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def qemu_nbd_of(folder: str) -> list[int]:
    """PIDs of qemu-nbd processes serving an image in ``folder``."""
    out = subprocess.run(["pgrep", "-f", f"qemu-nbd .*{folder}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def read_all(h) -> bytes:
    return b"".join(h.pread(16 * MiB, off) for off in range(0, SIZE, 16 * MiB))


def conversion(disk) -> dict:
    return json.loads(vdisk("info", disk, "--json").stdout)["conversion"]


def states_done(disk) -> tuple[int, bool]:
    """(states done, complete), read in-process: quick, for timing the kill."""
    with vdisk_.Disk.open(disk, readonly=True) as d:
        rec = record_of(d)
        return rec.next, rec.complete


def wait_until(cond, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """base (dense) <- mid <- top, each layer rewriting part of the one below."""
    d = tmp_path_factory.mktemp("online")
    base, mid, top = (str(d / n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
    sh("qemu-io", "-c", f"write -P 1 0 {40 * MiB}", "-c", f"write -z {130 * MiB} 1M", base)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
    # The big layer is the second, so a kill after the first lands inside the conversion.
    sh("qemu-io", "-c", f"write -P 2 {20 * MiB} {90 * MiB}", "-c", f"write -z {120 * MiB} 64k",
       "-c", "write -P 5 4096 1536", mid)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", mid, "-F", "qcow2", top)
    sh("qemu-io", "-c", f"write -P 3 {50 * MiB} {30 * MiB}", "-c", f"discard {10 * MiB} 1M", top)
    raws = {}
    for name in (base, mid, top):
        raw = name + ".raw"
        sh("qemu-img", "convert", "-O", "raw", name, raw)
        raws[name] = raw
    return d, base, mid, top, raws


def test_clients_write_while_the_chain_converts_behind_them(chain, tmp_path):
    d, base, mid, top, raws = chain
    disk = str(tmp_path / "on.vdisk")
    t0 = time.monotonic()
    # Paced, so the conversion is still running when the server is killed.
    vdisk("convert", "--online", "--rate", "40M", top, disk)
    assert time.monotonic() - t0 < 10
    c = conversion(disk)
    assert c["online"] and not c["complete"] and c["source_in_use"]
    # Before anything is served, what needs the source is refused, not guessed.
    r = vdisk("snapshot", "create", disk, "x", check=False)
    assert r.returncode == 5 and "converted online" in r.stderr

    model = bytearray(open(raws[top], "rb").read())
    rng = random.Random(7)

    def client_round(h, count):
        for _ in range(count):
            off = rng.randrange(0, SIZE - 70000)
            n = rng.randrange(1, 70000)
            if rng.random() < 0.7:
                data = rng.randbytes(n)
                h.pwrite(data, off)
                model[off:off + n] = data
            else:
                h.zero(n, off)
                model[off:off + n] = bytes(n)
            h.flush()
            roff = rng.randrange(0, SIZE - 65536)
            assert h.pread(65536, roff) == bytes(model[roff:roff + 65536])

    s = Serve(disk, str(d))
    client_round(s.h, 10)
    wait_until(lambda: states_done(disk)[0] >= 1, "the base layer was not converted")
    assert not states_done(disk)[1]
    s.kill()                                     # a crash mid-conversion
    c = conversion(disk)
    assert not c["complete"] and c["states_done"] >= 1

    s = Serve(disk, str(d))
    assert read_all(s.h) == bytes(model)         # nothing flushed was lost; the top shows through
    client_round(s.h, 60)
    wait_until(lambda: conversion(disk)["complete"], "the conversion did not finish")
    client_round(s.h, 10)
    assert read_all(s.h) == bytes(model)
    s.stop()

    c = conversion(disk)
    assert c["complete"] and not c["source_in_use"]
    snaps = json.loads(vdisk("snapshot", "list", disk, "--json").stdout)
    assert [x["name"] for x in snaps] == ["base.qcow2", "mid.qcow2"]
    for name, src in (("base.qcow2", base), ("mid.qcow2", mid)):
        out = str(tmp_path / (name + ".raw"))
        vdisk("export", disk, out, "--snapshot", name)
        sh("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", out, raws[src])
    vdisk("export", disk, str(tmp_path / "rp.raw"))
    assert open(str(tmp_path / "rp.raw"), "rb").read() == bytes(model)
    assert vdisk("verify", disk).returncode == 0
    # An ordinary disk now: snapshots and deletes work, the source is not needed.
    vdisk("snapshot", "create", disk, "after")
    vdisk("snapshot", "delete", disk, "base.qcow2")
    assert vdisk("verify", disk).returncode == 0
    assert vdisk("convert", "--resume", disk).stdout.strip().endswith("nothing to convert; it is complete")


def test_resume_in_the_foreground_when_nobody_serves(chain, tmp_path):
    d, base, mid, top, raws = chain
    disk = str(tmp_path / "fg.vdisk")
    vdisk("convert", "--online", top, disk)
    out = json.loads(vdisk("convert", "--resume", disk, "--verify", "--json").stdout)
    assert out["snapshots"] == ["base.qcow2", "mid.qcow2"] and out["verified_bytes"] > 0
    assert conversion(disk)["complete"]
    assert vdisk("verify", disk).returncode == 0


def test_a_mount_converts_too_and_shows_the_layers_as_they_land(chain, tmp_path):
    d, base, mid, top, raws = chain
    disk, mnt = str(tmp_path / "m.vdisk"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    vdisk("convert", "--online", "--rate", "200M", top, disk)
    vdisk("mount", disk, mnt)
    try:
        img = os.path.join(mnt, "disk.img")
        fd = os.open(img, os.O_RDWR)
        try:
            os.pwrite(fd, b"m" * 8192, 3 * MiB + 100)
            os.fsync(fd)
            assert os.pread(fd, 4096, 51 * MiB) == b"\x03" * 4096     # the top, through the origin
        finally:
            os.close(fd)
        wait_until(lambda: conversion(disk)["complete"], "the conversion did not finish")
        assert sorted(os.listdir(os.path.join(mnt, "snapshots"))) == ["base.qcow2.img", "mid.qcow2.img"]
        for name, src in (("base.qcow2", base), ("mid.qcow2", mid)):
            sh("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw",
               os.path.join(mnt, "snapshots", name + ".img"), raws[src])
        with open(img, "rb") as f:
            f.seek(3 * MiB + 100)
            assert f.read(8192) == b"m" * 8192
    finally:
        vdisk("umount", mnt)
    assert vdisk("verify", disk).returncode == 0
