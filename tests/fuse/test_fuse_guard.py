"""The FUSE file system's delete/revert guard and the change it guards are one
step for new opens: a program that opens snapshots/NAME.img or disk.img
while the change is under way is refused, never handed a file that is going
away or changing under it.

The file system runs in this process without a kernel mount (its handlers
are called directly), wired to a control server the way the mount process
wires it, so a control operation can be held between its guard and its act
deterministically: the disk's method is wrapped to stop and wait there.
"""

from __future__ import annotations

import errno
import os
import threading

import pyfuse3
import pytest
import trio

from vdisk import Disk
from vdisk.control.client import find_server
from vdisk.errors import Busy
from vdisk.fusefs import daemon
from vdisk.fusefs.fs import DISK_INO, SNAPDIR_INO, VdiskFS


@pytest.fixture
def fs(tmp_path):
    """An unmounted VdiskFS on a disk with snapshot 's', and its control server."""
    path = str(tmp_path / "g.vdisk")
    d = Disk.create(path, 4 << 20)
    d.write(0, b"s" * 4096)
    d.create_snapshot("s")
    fs = VdiskFS(d, str(tmp_path / "mnt"))
    control = daemon.control_server(d, fs, fs.mountpoint)
    control.start()
    try:
        yield fs
    finally:
        control.close()
        d.close()


def _held(disk, method: str):
    """Wrap disk.METHOD so that the call stops before acting until released."""
    reached, release = threading.Event(), threading.Event()
    real = getattr(disk, method)

    def held(*args):
        reached.set()
        assert release.wait(30), "the test never released the held operation"
        return real(*args)

    setattr(disk, method, held)
    return reached, release


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:   # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _ino(fs, name: str) -> int:
    if name == "disk.img":
        return DISK_INO
    return trio.run(fs.lookup, SNAPDIR_INO, name.encode(), None).st_ino


def _open(fs, ino: int, flags=os.O_RDONLY) -> int:
    return trio.run(fs.open, ino, flags, None).fh


def _close(fs, fh: int):
    trio.run(fs.release, fh)


@pytest.mark.parametrize("op, name, code", [
    ("delete_snapshot", "s.img", errno.ENOENT),   # going away: as if already gone
    ("revert", "disk.img", errno.EBUSY),          # changing: try again when it is done
])
def test_no_open_slips_in_between_guard_and_change(fs, op, name, code):
    ino = _ino(fs, name)      # looked up before: the kernel may hold the inode
    reached, release = _held(fs.disk, op)
    call = {"delete_snapshot": lambda c: c.delete_snapshot("s"), "revert": lambda c: c.revert("s")}[op]

    def change():
        with find_server(fs.disk.path) as c:
            call(c)

    t, out = _in_thread(change)
    try:
        assert reached.wait(30), "the control operation never reached the disk"
        # The guard has passed (nothing open); the change has not happened yet.
        with pytest.raises(pyfuse3.FUSEError) as e:
            _close(fs, _open(fs, ino))
        assert e.value.errno == code
    finally:
        release.set()
        t.join(30)
    assert "error" not in out, out.get("error")
    if op == "revert":
        _close(fs, _open(fs, ino, os.O_RDWR))
    else:
        with pytest.raises(pyfuse3.FUSEError) as e:
            _open(fs, ino)
        assert e.value.errno == errno.ESTALE        # the inode of a deleted snapshot


def test_a_file_opened_first_still_blocks_the_change(fs):
    fh = _open(fs, _ino(fs, "s.img"))
    try:
        with find_server(fs.disk.path) as c, pytest.raises(Busy, match="open 1 time"):
            c.delete_snapshot("s")
    finally:
        _close(fs, fh)
    fh = _open(fs, DISK_INO, os.O_RDWR)
    try:
        with find_server(fs.disk.path) as c, pytest.raises(Busy, match="close it before reverting"):
            c.revert("s")
    finally:
        _close(fs, fh)
    with find_server(fs.disk.path) as c:
        c.revert("s")
        c.delete_snapshot("s")
