"""``vdisk snapshot rename`` on a mounted disk: snapshots/OLD.img becomes
snapshots/NEW.img (the real mount, read with ordinary file calls), an open
OLD.img refuses the rename (exit 5), and no open slips in between the guard
and the rename (the file system in process, as in test_fuse_guard.py)."""

from __future__ import annotations

import errno
import json
import os

import pyfuse3
import pytest

from fuse_util import MiB, pattern, run_vdisk
from test_fuse_guard import _close, _held, _in_thread, _ino, _open, fs  # noqa: F401  (fs: a fixture)
from vdisk.control.client import find_server
from vdisk.errors import Busy


def _write(path, data, offset=0):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path, length, offset=0):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_the_image_file_follows_the_new_name(disk, mount):
    m = mount(disk)
    _write(m.image, pattern(1, MiB))
    run_vdisk("snapshot", "create", disk, "before")
    _write(m.image, pattern(2, MiB))
    assert os.listdir(os.path.join(m.mp, "snapshots")) == ["before.img"]
    assert _read(m.snap("before"), MiB) == pattern(1, MiB)      # looked up and cached by the kernel
    r = run_vdisk("snapshot", "rename", disk, "before", "release-1.0")
    assert r.stdout == "renamed snapshot before to release-1.0\n"
    assert os.listdir(os.path.join(m.mp, "snapshots")) == ["release-1.0.img"]
    assert not os.path.exists(m.snap("before"))
    with pytest.raises(FileNotFoundError):
        open(m.snap("before"), "rb")
    assert _read(m.snap("release-1.0"), MiB) == pattern(1, MiB)
    assert os.stat(m.snap("release-1.0")).st_size == 64 * MiB
    assert _read(m.image, MiB) == pattern(2, MiB)                # disk.img is untouched
    out = json.loads(run_vdisk("snapshot", "rename", disk, "release-1.0", "v1", "--json").stdout)
    assert (out["name"], out["old_name"]) == ("v1", "release-1.0")
    assert os.listdir(os.path.join(m.mp, "snapshots")) == ["v1.img"]


def test_an_open_image_file_refuses_the_rename(disk, mount):
    run_vdisk("snapshot", "create", disk, "a")
    m = mount(disk)
    # disk.img open (for writing, even) does not hold a snapshot's name.
    with open(m.image, "r+b"), open(m.snap("a"), "rb") as f:
        r = run_vdisk("snapshot", "rename", disk, "a", "b", check=False)
        assert r.returncode == 5 and "is open 1 time(s)" in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1
        assert len(f.read(4096)) == 4096                          # it goes on reading
        assert os.listdir(os.path.join(m.mp, "snapshots")) == ["a.img"]
    run_vdisk("snapshot", "rename", disk, "a", "b")
    assert os.listdir(os.path.join(m.mp, "snapshots")) == ["b.img"]


def test_no_open_slips_in_between_guard_and_rename(fs):  # noqa: F811
    ino = _ino(fs, "s.img")     # looked up before: the kernel may hold the inode
    reached, release = _held(fs.disk, "rename_snapshot")

    def change():
        with find_server(fs.disk.path) as c:
            return c.rename_snapshot("s", "t")

    t, out = _in_thread(change)
    try:
        assert reached.wait(30), "the rename never reached the disk"
        # The guard has passed (nothing open); the rename has not happened yet.
        with pytest.raises(pyfuse3.FUSEError) as e:
            _close(fs, _open(fs, ino))
        assert e.value.errno == errno.ENOENT      # going away: as if already gone
    finally:
        release.set()
        t.join(30)
    assert "error" not in out, out.get("error")
    with pytest.raises(pyfuse3.FUSEError) as e:
        _open(fs, ino)
    assert e.value.errno == errno.ESTALE          # the old name's inode is gone
    new = _ino(fs, "t.img")
    assert new != ino
    fh = _open(fs, new)
    try:
        with find_server(fs.disk.path) as c, pytest.raises(Busy, match="open 1 time"):
            c.rename_snapshot("t", "u")
    finally:
        _close(fs, fh)
    with find_server(fs.disk.path) as c:
        c.rename_snapshot("t", "u")
    with pytest.raises(pyfuse3.FUSEError) as e:
        _ino(fs, "t.img")
    assert e.value.errno == errno.ENOENT
    assert _ino(fs, "u.img")
