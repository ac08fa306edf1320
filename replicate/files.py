"""Where replication keeps its small records: beside a local disk's
metadata, or inside a rados disk's own metadata.

A local disk is a directory, and its records are files there, written
whole or not at all (:func:`write_atomic`). A rados disk has no directory
of its own - ``disk.path`` is only this host's state directory
(vdisk.location.state_dir), which another host does not see and a reboot
may clear - so whatever must agree with the disk's contents is one of the
disk's own records instead (``Disk.extra_record`` / ``stage_extra_record``),
committed with the disk (:func:`in_pool`).
"""

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


def in_pool(disk) -> bool:
    """Whether ``disk`` has no container directory (a ``rados:`` disk): its
    records then live in its own metadata, not in files beside it."""
    return disk.where.get("kind") != "local"


def label(disk) -> str:
    """How messages name ``disk``: the path it was opened by, or ``rados:POOL/NAME``."""
    return disk.location if in_pool(disk) else disk.path


def put_record(disk, name: str, value: bytes | None):
    """Set (None: delete) record ``name`` of a rados disk and commit it,
    with every change made to the disk before it."""
    disk.stage_extra_record(name, value)
    disk.flush()
