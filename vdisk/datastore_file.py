"""The local data store: the PBA space as one sparse file (``DISK/data``).

The :class:`vdisk.datastore.DataStore` contract over a file descriptor:
``pread``/``preadv``/``pwrite``, ``fdatasync`` for durability,
``sync_file_range`` to start write-back early, and ``fallocate`` hole
punching with ``SEEK_DATA``/``SEEK_HOLE`` to give free space back.

Every system call is looked up on :mod:`os` when it is made, not bound at
import, so tests/engine/test_durability.py can inject a fault by replacing
one ``os`` function for one call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

# The process's own symbols, libc's among them (find_library runs ldconfig: ~8 ms of every command).
_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_SYNC_FILE_RANGE_WRITE = 2


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Return the range's space to the file system; False if unsupported."""
    r = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                        ctypes.c_int64(offset), ctypes.c_int64(length))
    return r == 0


def start_writeback(fd: int, offset: int, length: int) -> int:
    """Ask the kernel to start writing a range to the device, without waiting.

    The commit's fdatasync then finds most of a large write already on its
    way, instead of writing it all while the caller waits; the device works
    while this process hashes the next data. Returns 0 or the errno: an I/O
    error here means written data may already be lost.
    """
    r = _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)
    return ctypes.get_errno() if r else 0


class NotARegularFile(OSError):
    """The data path exists but is a directory, a device or a FIFO."""


class FileDataStore:
    """The PBA space in a local sparse file."""

    def __init__(self, path: str, readonly: bool):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise NotARegularFile(errno.EINVAL, "not a regular file", path)

    def read(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def readinto(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buf], offset)

    def read_many_into(self, ranges, views):
        # Local reads are done in the call: nothing is left in flight.
        fd = self.fd
        got = [os.preadv(fd, [view], offset) for (_length, offset), view in zip(ranges, views)]
        return lambda: got

    def write(self, data: memoryview, offset: int) -> None:
        fd = self.fd
        while len(data):
            n = os.pwrite(fd, data, offset)
            data = data[n:]
            offset += n

    def start_writeback(self, offset: int, length: int) -> None:
        # Only EIO says data may be lost; a file system without the call
        # (EINVAL, ENOSYS) just gets no head start.
        err = start_writeback(self.fd, offset, length)
        if err == errno.EIO:
            raise OSError(err, os.strerror(err))

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def punch(self, offset: int, length: int) -> bool:
        return punch_hole(self.fd, offset, length)

    def seek_data(self, offset: int) -> int | None:
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:       # no data after offset
                return None
            raise

    def seek_hole(self, offset: int) -> int:
        return os.lseek(self.fd, offset, os.SEEK_HOLE)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        # -1 after close: a late call fails with EBADF, an OSError like any other.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
