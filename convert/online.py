"""Opening a disk that is being converted online, for the processes that serve it.

``vdisk convert --online SOURCE DISK`` only prepares DISK (the conversion
record and the engine's anchor, :mod:`vdisk.anchor`) and returns. Whoever
then opens the disk to serve it - ``vdisk serve`` (nbdkit), ``vdisk mount``
(FUSE), ``vdisk convert --resume`` - opens it through :func:`open_disk`,
which attaches the chain's top image as the running point's origin and,
for a writer, runs the conversion in a background thread: states into the
anchor, a snapshot per layer, then the merge. ``close()`` stops that thread
at its next chunk; the next open carries on from the last checkpoint.
"""

from __future__ import annotations

import logging
import threading

import vdisk
from vdisk.errors import Cancelled, VdiskError

from . import converter

log = logging.getLogger("vdisk")


def open_disk(path, readonly: bool = False, background: bool = True, break_lock: bool = False):
    """:meth:`vdisk.Disk.open` (a path or a rados: location), plus what an
    online conversion in progress needs."""
    disk = vdisk.Disk.open(path, readonly=readonly, break_lock=break_lock)
    try:
        rec = converter.progress_of(disk)
        if rec is not None and rec.online and disk.converting:
            disk.attach_origin(converter.open_origin(rec))
            if not readonly and background:
                start_background(disk)
    except BaseException:
        disk.close()
        raise
    return disk


def start_background(disk, on_change=None) -> bool:
    """Carry on an online conversion of ``disk`` (opened by :func:`open_disk`
    with ``background=False``) in a thread; False when there is none.
    ``on_change`` is :func:`vdisk.convert.converter.run`'s."""
    rec = converter.progress_of(disk)
    if disk.readonly or rec is None or not rec.online or not disk.converting:
        return False
    threading.Thread(target=_convert_in_background, args=(disk, on_change), name="vdisk-convert",
                     daemon=True).start()
    return True


def _convert_in_background(disk, on_change):
    try:
        with disk.maintenance():
            summary = converter.run(disk, on_change=on_change)
        log.info("online conversion of %s done: %d layers, %d snapshots; its source is no longer used",
                 disk.path, summary.layers, len(summary.snapshots))
    except Cancelled:
        pass        # the disk is closing; the next open resumes
    except VdiskError as e:
        log.error("online conversion of %s stopped: %s; it resumes when the disk is next opened", disk.path, e)
