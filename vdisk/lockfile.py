"""The writer's lock file (``DISK/lock``): one writing process per disk.

``flock`` rather than a PID file alone: the kernel drops the lock when its
holder dies, however it dies, so a crashed writer never leaves the disk
locked. The PID inside only names the holder in the Busy message.
"""

from __future__ import annotations

import fcntl
import os

from vdisk.errors import Busy, IntegrityError


def take_lock(path: str) -> int:
    """Lock ``path``'s lock file for this process; Busy if another holds it."""
    lock_path = os.path.join(path, "lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise IntegrityError(f"cannot open lock file {lock_path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode().strip() or "unknown"
        finally:
            os.close(fd)
        raise Busy(f"disk {path} is in use by PID {pid}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
