"""vdisk: virtual disks as copy-on-write B+trees, with instant snapshots.

The public API is :class:`Disk` (``Disk.create``, ``Disk.open``): the engine
(:mod:`vdisk.disk`) with the snapshot lifecycle (:mod:`vdisk.snapshots`) on
top; and :class:`SnapshotView`. Errors are in :mod:`vdisk.errors`.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that importing a subpackage (vdisk.btree) does not load the engine.
    if name == "Disk":
        # The engine with the snapshot lifecycle on top (snapshots/managed.py).
        from .snapshots.managed import Disk
        return Disk
    if name in ("SnapshotView", "Extent", "SnapshotInfo"):
        from . import disk
        return getattr(disk, name)
    raise AttributeError(name)
