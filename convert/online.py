"""Opening a disk that is being converted online, for the processes that serve it.

``vdisk convert --online SOURCE DISK`` only prepares DISK (the conversion
record and the engine's anchor, :mod:`vdisk.anchor`) and returns. Whoever
then opens the disk to serve it - ``vdisk serve`` (nbdkit), ``vdisk mount``
(FUSE), ``vdisk convert --resume`` - opens it through :func:`open_disk`,
which attaches the chain's top image as the running point's origin and,
for a writer, runs the conversion in a background thread: states into the
anchor, a snapshot per layer, then the merge. ``close()`` stops that thread
at its next chunk; the next open carries on from the last checkpoint.

A rados disk opens on any host, but its origin is the chain's top image,
a file of the host the conversion started on (the record names it). A
server or a writer elsewhere is refused in one line (the layers are not
there). A command that only reads the disk's records there (``vdisk
info``, ``snapshot list``, ``send`` of a snapshot) opens it without the
origin: the snapshots read as always, and only a read of the running
point where it maps nothing yet fails, saying the source chain is not
open here.
"""

from __future__ import annotations

import logging
import threading

import vdisk
from vdisk.errors import Cancelled, NotFound, VdiskError

from . import converter
from .state import disk_label, started_elsewhere

log = logging.getLogger("vdisk")


def open_disk(path, readonly: bool = False, background: bool = True, break_lock: bool = False):
    """:meth:`vdisk.Disk.open` (a path or a rados: location), plus what an
    online conversion in progress needs.

    ``background``: this process serves the disk (and, writable, carries
    the conversion on); False for a command that opens it briefly.
    """
    disk = vdisk.Disk.open(path, readonly=readonly, break_lock=break_lock)
    try:
        rec = converter.progress_of(disk)
        if rec is not None and rec.online and disk.converting:
            try:
                origin = converter.open_origin(rec)
            except NotFound:
                if not (readonly and not background and started_elsewhere(rec)):
                    raise
                origin = None       # a brief reader on another host: see the module docstring
            if origin is not None:
                disk.attach_origin(origin)
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
                 disk_label(disk), summary.layers, len(summary.snapshots))
    except Cancelled:
        pass        # the disk is closing; the next open resumes
    except VdiskError as e:
        log.error("online conversion of %s stopped: %s; it resumes when the disk is next opened",
                  disk_label(disk), e)
