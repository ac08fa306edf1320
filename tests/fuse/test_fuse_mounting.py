"""``vdisk mount``/``vdisk umount`` as commands: exclusivity with serve and
other mounts, bad mountpoints, busy and stale mounts, foreground signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from fuse_util import MiB, is_mounted, pattern, run_vdisk, vdisk_cmd

from vdisk import Disk


def _one_line(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_a_disk_is_mounted_or_served_by_one_process_at_a_time(disk, mount, tmp_path):
    m = mount(disk)
    other = tmp_path / "other"
    other.mkdir()
    _one_line(run_vdisk("mount", disk, str(other), check=False), 5, "held by vdisk mount (FUSE) at " + m.mp,
              f"PID {m.pid}")
    if shutil.which("nbdkit"):
        _one_line(run_vdisk("serve", disk, "--socket", str(tmp_path / "s.sock"), check=False), 5,
                  "vdisk mount (FUSE)")
    # Another disk onto the same mountpoint.
    run_vdisk("create", str(tmp_path / "e.vdisk"), "--size", "1M")
    _one_line(run_vdisk("mount", str(tmp_path / "e.vdisk"), m.mp, check=False), 5, "already a mount point",
              "vdisk umount")
    assert not os.listdir(other)
    with open(m.image, "rb") as f:              # the first mount is unharmed
        assert f.read(4) == bytes(4)


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit (./dev setup installs it)")
def test_mount_is_refused_while_the_disk_is_served(disk, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    serve = subprocess.Popen(vdisk_cmd("serve", disk, "--socket", sock), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        assert line.startswith("serving"), line + serve.stderr.read() if not line else line
        mp = tmp_path / "mnt"
        mp.mkdir()
        _one_line(run_vdisk("mount", disk, str(mp), check=False), 5, "held by vdisk serve")
        assert not is_mounted(str(mp))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)


def test_bad_mountpoints_and_disks_are_refused_with_one_line(disk, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    _one_line(run_vdisk("mount", disk, str(full), check=False), 2, "not empty")
    _one_line(run_vdisk("mount", disk, str(tmp_path / "nowhere"), check=False), 3, "does not exist")
    (tmp_path / "file").write_text("x")
    _one_line(run_vdisk("mount", disk, str(tmp_path / "file"), check=False), 2, "not a directory")
    _one_line(run_vdisk("mount", str(tmp_path / "no.vdisk"), str(tmp_path), check=False), 3, "no disk at")
    _one_line(run_vdisk("umount", str(full), check=False), 3, "is not mounted")
    _one_line(run_vdisk("umount", "/proc", check=False), 2, "not a vdisk mount")


def test_umount_refuses_a_busy_mount_then_flushes_and_releases(disk, mount):
    m = mount(disk)
    f = open(m.image, "r+b")
    f.seek(5 * MiB)
    f.write(pattern(4, 100_000))                 # written through, never fsynced
    f.flush()
    _one_line(run_vdisk("umount", m.mp, check=False), 5, "busy", "--lazy")
    assert is_mounted(m.mp)
    f.close()
    r = m.umount()
    assert "flushed and closed" in r.stdout
    assert not is_mounted(m.mp)
    with Disk.open(disk) as d:                   # released at once, and nothing was lost
        assert d.read(5 * MiB, 100_000) == pattern(4, 100_000)


def test_a_stale_mount_is_cleaned_by_the_next_mount(disk, mount):
    m = mount(disk)
    fd = os.open(m.image, os.O_RDWR)
    os.pwrite(fd, b"kept", 0)
    os.fsync(fd)
    os.close(fd)
    m.kill9()
    with pytest.raises(OSError):
        os.listdir(m.mp)                         # Transport endpoint is not connected
    again = mount(disk, m.mp)
    assert "cleaned up a stale mount" in again.stderr and m.mp in again.stderr
    with open(again.image, "rb") as f:
        assert f.read(4) == b"kept"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_mount_stops_cleanly_on_a_signal(disk, tmp_path, sig):
    mp = tmp_path / "fg"
    mp.mkdir()
    p = subprocess.Popen(vdisk_cmd("mount", "--foreground", disk, str(mp)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("mounted"), line + p.stderr.read()
        with open(mp / "disk.img", "r+b") as f:
            f.write(pattern(5, 64 * 1024))        # acknowledged, not fsynced
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "unmounted" in out
        assert not is_mounted(str(mp))
        with Disk.open(disk) as d:
            assert d.read(0, 64 * 1024) == pattern(5, 64 * 1024)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_lazy_umount_detaches_and_the_process_exits_after_the_last_close(disk, mount):
    m = mount(disk)
    f = open(m.image, "r+b")
    r = run_vdisk("umount", "--lazy", m.mp)
    assert "detached" in r.stdout and not is_mounted(m.mp)
    f.write(b"late")                             # the open file still works
    f.flush()
    f.close()
    deadline = time.monotonic() + 30
    from fuse_util import alive
    while alive(m.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(m.pid)
    with Disk.open(disk) as d:
        assert d.read(0, 4) == b"late"
