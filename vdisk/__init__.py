"""vdisk: virtual disks as copy-on-write B+trees, with instant snapshots.

The engine's public API is :class:`Disk` (``Disk.create``, ``Disk.open``) and
:class:`SnapshotView`; errors are in :mod:`vdisk.errors`.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that importing a subpackage (vdisk.btree) does not load the engine.
    if name in ("Disk", "SnapshotView", "Extent", "SnapshotInfo"):
        from . import disk
        return getattr(disk, name)
    raise AttributeError(name)
