"""Small durable files beside a disk's metadata: written whole or not at all."""

from __future__ import annotations

import os

from vdisk.container import fsync_dir


def write_atomic(path: str, data: bytes):
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one, whole.

    Owner-only (0600), as every file of a disk.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
