"""Planning a conversion and reading its record: what is converted, in what
order, under which names, and how far it got (:mod:`vdisk.convert.format`).

Kept apart from the converter so the front ends (``vdisk info``, serve,
mount, the control server) can ask about a conversion without the
machinery that runs one.
"""

from __future__ import annotations

import os
import socket

from vdisk.errors import ImageError, InvalidArgument, NotFound
from vdisk.names import SNAPSHOT_NAME_RULE, validate_snapshot_name

from . import format as cfmt
from .chain import Layer


def plan(layers: list[Layer], names: list[str] | None) -> list[cfmt.Step]:
    """One step per state of the chain, base first; the snapshot names they get."""
    steps = []
    for i, ly in enumerate(layers):
        for s in ly.internal:
            steps.append(cfmt.Step(i, s, f"{ly.label}@{s}"))
        steps.append(cfmt.Step(i, None, None if i == len(layers) - 1 else ly.label))
    snaps = [s for s in steps if s.snapshot is not None]
    if names is not None:
        if len(names) != len(snaps):
            given = f"{len(names)} name{'s' if len(names) != 1 else ''}"
            raise InvalidArgument(f"--names gives {given}, but the chain makes {len(snaps)} "
                                  f"snapshots ({', '.join(s.snapshot for s in snaps) or 'none'})")
        for s, n in zip(snaps, names):
            s.snapshot = n
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InvalidArgument(f"--names: {twice!r} is given twice")
    else:
        # Two layers with one file name in different folders: the later
        # ones get the first "-k" that no layer is called and none took.
        taken = {s.snapshot for s in snaps}
        used: set[str] = set()
        for s in snaps:
            if s.snapshot in used:
                k = 2
                while f"{s.snapshot}-{k}" in taken or f"{s.snapshot}-{k}" in used:
                    k += 1
                s.snapshot = f"{s.snapshot}-{k}"
            used.add(s.snapshot)
    for s in snaps:
        try:
            validate_snapshot_name(s.snapshot)
        except InvalidArgument:
            hint = "" if names is not None else "; give the names with --names"
            raise InvalidArgument(f"{s.snapshot!r} cannot name a snapshot ({SNAPSHOT_NAME_RULE}){hint}") from None
    return steps


def layer_facts(ly: Layer) -> dict:
    st = os.stat(ly.path)
    return {"path": ly.path, "format": ly.format, "size": ly.size, "mtime_ns": st.st_mtime_ns}


def record_of(disk) -> cfmt.Progress | None:
    """The conversion record of an open disk (finished or not), or None."""
    buf = disk.extra_record(cfmt.RECORD_NAME)
    return None if buf is None else cfmt.decode(buf)


def progress_of(disk) -> cfmt.Progress | None:
    """The record of a conversion still to finish, or None."""
    rec = record_of(disk)
    return None if rec is None or rec.complete else rec


def status(disk) -> dict | None:
    """What ``vdisk info`` shows of a conversion (None: the disk was not converted)."""
    rec = record_of(disk)
    if rec is None:
        return None
    return {"source": rec.source, "layers": [f["path"] for f in rec.layers], "online": rec.online,
            "complete": rec.complete, "states_done": rec.next, "states": len(rec.steps),
            "state_bytes_done": rec.done, "source_in_use": not rec.complete,
            "resume": None if rec.complete or rec.online else f"vdisk convert --resume {disk_label(disk)}"}


def disk_label(disk) -> str:
    """How messages name ``disk``: the path it was opened by, or ``rados:POOL/NAME``."""
    return disk.location if disk.where.get("kind") != "local" else disk.path


def started_elsewhere(rec: cfmt.Progress) -> bool:
    """Whether the conversion started on another host than this one (whose
    layer paths may name nothing here, or other files)."""
    return rec.host is not None and rec.host != socket.gethostname()


def check_layers(rec: cfmt.Progress) -> list[Layer]:
    """The layers, each still the file the conversion started from (its mtime)."""
    layers = []
    for f in rec.layers:
        try:
            st = os.stat(f["path"])
        except FileNotFoundError:
            if started_elsewhere(rec):
                raise NotFound(f"layer {f['path']} of the conversion is not on this host: the conversion of "
                               f"{rec.source} started on host {rec.host}, where its source chain is; go on "
                               f"there") from None
            raise NotFound(f"layer {f['path']} of the conversion is gone; it cannot be finished") from None
        if st.st_mtime_ns != f["mtime_ns"]:
            there = f" (it started on host {rec.host})" if started_elsewhere(rec) else ""
            raise ImageError(f"layer {f['path']} changed since the conversion started{there}; it cannot be "
                             f"finished")
        layers.append(Layer(f["path"], f["format"], f["size"]))
    return layers
