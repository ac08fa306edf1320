"""Refused operations fail with the documented errno, and the mount keeps
working afterwards."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from fuse_util import MiB, pattern, run_vdisk

SIZE = 64 * MiB
_libc = ctypes.CDLL(None, use_errno=True)


def _errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def _fallocate(fd, mode, off, length):
    if _libc.fallocate(fd, mode, ctypes.c_int64(off), ctypes.c_int64(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _still_works(m):
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, pattern(77, 10_000), 123_456)
        os.fsync(fd)
        assert os.pread(fd, 10_000, 123_456) == pattern(77, 10_000)
    finally:
        os.close(fd)
    assert sorted(os.listdir(m.mp)) == ["disk.img", "snapshots"]


def test_refused_operations_give_their_errno_and_the_mount_survives(disk, mount):
    run_vdisk("snapshot", "create", disk, "s")
    m = mount(disk)
    snap = m.snap("s")
    fd = os.open(m.image, os.O_RDWR)
    try:
        # The image has the disk's size: past the end is EFBIG, over the end a short write.
        assert _errno_of(os.pwrite, fd, b"x", SIZE) == errno.EFBIG
        assert _errno_of(os.pwrite, fd, b"x", SIZE + 10 * MiB) == errno.EFBIG
        assert os.pwrite(fd, b"abcdef", SIZE - 2) == 2
        assert os.pread(fd, 10, SIZE - 2) == b"ab"
        assert os.fstat(fd).st_size == SIZE
        # Size changes, preallocation and fallocate past the end.
        assert _errno_of(os.ftruncate, fd, MiB) == errno.EPERM
        assert _errno_of(os.ftruncate, fd, SIZE + MiB) == errno.EPERM
        os.ftruncate(fd, SIZE)                        # to the same size: a no-op, allowed
        assert _errno_of(_fallocate, fd, 0, 0, MiB) == errno.EOPNOTSUPP
        _fallocate(fd, 0x02 | 0x01, SIZE + 4096, 4096)   # punching past the end: nothing to do, as on ext4
        assert _errno_of(_fallocate, fd, 0x10, SIZE - 4096, 8192) == errno.EFBIG   # zero range growing the file
        assert os.fstat(fd).st_size == SIZE
    finally:
        os.close(fd)
    assert _errno_of(os.truncate, m.image, 0) == errno.EPERM
    assert _errno_of(os.open, m.image, os.O_WRONLY | os.O_TRUNC) == errno.EPERM    # cp, shell ">"
    assert os.stat(m.image).st_size == SIZE
    assert _errno_of(os.unlink, m.image) == errno.EPERM
    assert _errno_of(os.rename, m.image, os.path.join(m.mp, "other.img")) == errno.EPERM
    assert _errno_of(os.mkdir, os.path.join(m.mp, "dir")) == errno.EPERM
    assert _errno_of(os.open, os.path.join(m.mp, "new.img"), os.O_CREAT | os.O_WRONLY) == errno.EPERM
    assert _errno_of(os.chmod, m.image, 0o600) == errno.EPERM
    assert _errno_of(os.symlink, "disk.img", os.path.join(m.mp, "link")) == errno.EPERM
    # Snapshots are read-only.
    assert _errno_of(os.open, snap, os.O_WRONLY) == errno.EROFS
    assert _errno_of(os.open, snap, os.O_RDWR) == errno.EROFS
    assert _errno_of(os.truncate, snap, 0) == errno.EROFS
    assert _errno_of(os.unlink, snap) == errno.EROFS
    assert _errno_of(os.rename, snap, os.path.join(m.mp, "snapshots", "t.img")) == errno.EROFS
    assert _errno_of(os.mkdir, os.path.join(m.mp, "snapshots", "d")) == errno.EROFS
    assert _errno_of(os.open, os.path.join(m.mp, "snapshots", "n.img"), os.O_CREAT | os.O_WRONLY) == errno.EROFS
    assert _errno_of(os.open, os.path.join(m.mp, "snapshots", "missing.img"), os.O_RDONLY) == errno.ENOENT
    fd = os.open(snap, os.O_RDONLY)
    try:
        assert _errno_of(os.pwrite, fd, b"x", 0) == errno.EBADF     # the kernel refuses a read-only fd
        assert _errno_of(_fallocate, fd, 0x02 | 0x01, 0, 4096) == errno.EBADF
    finally:
        os.close(fd)
    _still_works(m)
