"""Images out of a container: one state as raw/qcow2/vmdk, or every snapshot
as a qcow2 backing chain - so nothing is ever locked into vdisk.

The image is created with ``qemu-img create`` and written through a
writable qemu-nbd export (raw included, so every format takes one path);
only what the disk maps is written, and qemu-nbd's ``--detect-zeroes
unmap`` keeps zero blocks of mapped data sparse too. The image is built
under a hidden name beside OUT and renamed into place when it is complete,
so OUT either does not exist or is a whole image.

A chain export mirrors a mount's layout: ``OUTDIR/snapshots/NAME.qcow2``
per snapshot, each with its parent's file as backing (a tree when reverts
made branches) and holding only the ranges that changed since that parent
(:func:`vdisk.snapshots.diff.changed_extents`: changed data as data, new
holes as zero clusters), and ``OUTDIR/disk.qcow2``, the running point, on
top of its own parent.
"""

from __future__ import annotations

import os
import shutil
import time

import vdisk
from vdisk.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from vdisk.names import DEFERRED_PREFIX
from vdisk.snapshots.diff import EVERYTHING, changed_extents

from .compare import compare
from .converter import progress_of
from .qemu import Export, qemu_img

FORMATS = ("raw", "qcow2", "vmdk")
CHUNK_BYTES = 4 << 20


def _hidden(path: str) -> str:
    """The name OUT is built under; what a killed export of OUT left is removed."""
    d, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}.vdisk-export-"
    try:
        names = os.listdir(d)
    except OSError:
        names = []
    for n in names:
        pid = n[len(prefix):]
        if n.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(os.path.join(d, n))
    return os.path.join(d, f"{prefix}{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_ranges(view, img: Export, ranges, progress=None, label="export") -> tuple[int, int]:
    """Copy ``ranges`` ((offset, length, data)) of ``view`` into ``img``;
    (bytes written as data, bytes written as zeros)."""
    total = sum(r[1] for r in ranges) or 1
    done = data_bytes = zero_bytes = 0
    for off, ln, data in ranges:
        if not data:
            img.zero(ln, off)
            zero_bytes += ln
            done += ln
        else:
            for pos in range(off, off + ln, CHUNK_BYTES):
                n = min(CHUNK_BYTES, off + ln - pos)
                img.pwrite(view.read(pos, n), pos)
                data_bytes += n
                done += n
                if progress is not None:
                    progress(label, done, total)
    if progress is not None:
        progress(label, total, total)
    img.flush()
    return data_bytes, zero_bytes


def _create(path: str, fmt: str, size: int, backing: str | None = None, what: str | None = None):
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-b", backing, "-F", "qcow2"]
    args += [path, str(size)]
    qemu_img(*args, what=what or path)


def _check_new(out: str, what: str):
    """``out`` must not exist, and the directory it goes in must."""
    if os.path.lexists(out):
        raise AlreadyExists(f"{out} already exists; {what}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise NotFound(f"{parent}: no such directory")


def _refuse_unfinished(disk, disk_path: str, what: str):
    """The running point of an unfinished conversion is not yet the source's
    top image: exporting it would pass off a half-made state as the disk."""
    rec = progress_of(disk)         # None once the conversion is complete
    if rec is not None:
        raise Busy(f"{disk_path} is an unfinished conversion of {rec.source}, so {what} is not yet "
                   f"that image; finish it first: vdisk convert --resume {disk_path} (the snapshots "
                   f"it made so far can be exported with --snapshot)")


def _backing_name(name: str) -> str:
    """A snapshot layer's backing file, relative to its directory. qemu reads
    a name with a colon before any slash ("x:y.qcow2") as a protocol prefix;
    a leading "./" keeps it a file name."""
    return f"./{name}.qcow2" if ":" in name else f"{name}.qcow2"


def export_image(disk_path: str, out: str, *, snapshot: str | None = None, fmt: str = "raw",
                 verify: bool = False, progress=None) -> dict:
    """Write the running point (or ``snapshot``) of ``disk_path`` to image ``out``."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
    _check_new(out, "export writes a new image")
    t0 = time.monotonic()
    with vdisk.Disk.open(disk_path, readonly=True) as disk:
        if snapshot is None:
            _refuse_unfinished(disk, disk_path, "its running point")
        view = disk.open_snapshot(snapshot) if snapshot is not None else disk
        tmp = _hidden(out)
        try:
            _create(tmp, fmt, view.size, what=out)
            ranges = [(e.offset, e.length, True) for e in view.block_status(0, view.size) if e.allocated]
            with Export(tmp, fmt, read_only=False, what=out) as img:
                written, _zeros = _write_ranges(view, img, ranges, progress)
            if verify:
                with Export(tmp, fmt, what=out) as img:
                    compare(view, img, f"{out} against {snapshot or 'the running point'}")
            os.rename(tmp, out)
        except BaseException:
            _remove(tmp)
            raise
    return {"image": os.path.abspath(out), "format": fmt, "snapshot": snapshot, "size": view.size,
            "written_bytes": written, "verified": verify, "seconds": time.monotonic() - t0}


def _visible_parent(disk) -> str | None:
    """The running point's parent as users see it: a deferred (deleted,
    hidden) snapshot is skipped for its nearest listed ancestor."""
    recs = {r.name: r for r in disk.snapshot_records()}
    parent = disk.state.parent
    while parent is not None and parent.startswith(DEFERRED_PREFIX):
        parent = recs[parent].parent
    return parent


def export_chain(disk_path: str, outdir: str, *, verify: bool = False, progress=None) -> dict:
    """Every snapshot as a qcow2 layer over its parent's, the running point on top."""
    _check_new(outdir, "export --chain makes a new directory")
    t0 = time.monotonic()
    tmp = _hidden(outdir)
    layers = []
    try:
        with vdisk.Disk.open(disk_path, readonly=True) as disk:
            _refuse_unfinished(disk, disk_path, "its running point (the chain's top)")
            os.makedirs(os.path.join(tmp, "snapshots"))
            snaps = [s for s in disk.snapshots() if s.name]
            names = {s.name for s in snaps}
            if len(names) != len(snaps):
                raise InvalidArgument(f"{disk_path}: two snapshots share a name")
            plan = [(s.name, s.parent, s.size) for s in snaps] + [(None, _visible_parent(disk), disk.size)]
            for i, (name, parent, size) in enumerate(plan):
                if parent is not None and parent not in names:
                    raise NotFound(f"{disk_path}: snapshot {parent!r} (a parent) is not listed")
                rel = "disk.qcow2" if name is None else os.path.join("snapshots", f"{name}.qcow2")
                path = os.path.join(tmp, rel)
                final = os.path.join(outdir, rel)       # what messages name
                backing = None
                if parent is not None:
                    # Relative, so the directory can be moved as a whole.
                    backing = _backing_name(parent) if name is not None else os.path.join("snapshots",
                                                                                          f"{parent}.qcow2")
                _create(path, "qcow2", size, backing, what=final)
                view = disk if name is None else disk.open_snapshot(name)
                ranges = list(changed_extents(disk, parent if parent is not None else EVERYTHING, name))
                label = f"layer {i + 1}/{len(plan)}"
                with Export(path, "qcow2", read_only=False, what=final) as img:
                    written, zeros = _write_ranges(view, img, ranges, progress, label)
                if verify:
                    with Export(path, "qcow2", what=final) as img:
                        compare(view, img, f"{rel} against {name or 'the running point'}")
                layers.append({"file": rel, "snapshot": name, "backing": backing,
                               "written_bytes": written, "zero_bytes": zeros})
        os.rename(tmp, outdir)
    except BaseException:
        _remove(tmp)
        raise
    return {"directory": os.path.abspath(outdir), "format": "qcow2", "layers": layers, "verified": verify,
            "seconds": time.monotonic() - t0}


def _remove(path: str):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
