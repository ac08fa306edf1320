"""The conversion record: where a conversion into a container stands.

Stored as the engine's extra record ``convert`` (``ext/convert`` in the
container's metadata), committed together with the data it describes, so
after a crash it never claims more than the disk holds. It exists from the
moment the container is created until the conversion is complete; while it
exists, the running point is not yet the source's top image. Version 1::

    off  size  field
    0    8     magic b"VDCONVRT"
    8    2     record version (1)
    10   4     length n of the body
    14   n     body: UTF-8 JSON object (below)

The body::

    source      the top image as given (str)
    layers      [{path, format, size, mtime_ns}] base first; a layer whose
                size or mtime changed since the start refuses a resume
    steps       [{layer, internal, snapshot}]: one per state to convert, in
                order: ``layer`` indexes ``layers``; ``internal`` names the
                qcow2 internal snapshot read (null: the layer's current
                state); ``snapshot`` is the vdisk snapshot taken after it
                (null for the top layer's current state, the running point)
    next        index of the first step not finished
    done        bytes of step ``next``'s source range already converted
                (every extent below this offset is in the disk)
    started     Unix time, seconds (float)
    stats       {read, written, zeros, skipped, holes}: bytes so far (holes:
                what the states left to the ones below, never read)
    flat        true for an import: the top image as qemu shows it, chain
                and all, is one state (no snapshots)
    online      true for ``convert --online``: the states go into the
                engine's anchor (vdisk/anchor.py) while clients use the
                running point, which reads the top image as its origin
    complete    true once done: the record stays to say where the disk
                came from; the source is no longer used
    rate        an online conversion's pace in bytes per second (0: as
                fast as it goes), so clients keep most of the device
    host        only for a disk that other hosts can open (``rados:``): the
                host the conversion started on, where the layers' paths
                are; absent for a local disk (whose record is unchanged)
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field

from vdisk.errors import IntegrityError, UnsupportedVersion

RECORD_NAME = "convert"
MAGIC = b"VDCONVRT"
VERSION = 1
_HEAD = struct.Struct("<8sHI")


@dataclass
class Step:
    layer: int
    internal: str | None
    snapshot: str | None


@dataclass
class Progress:
    source: str
    layers: list[dict]
    steps: list[Step]
    next: int = 0
    done: int = 0
    started: float = 0.0
    stats: dict = field(default_factory=lambda: {"read": 0, "written": 0, "zeros": 0, "skipped": 0, "holes": 0})
    flat: bool = False
    online: bool = False
    complete: bool = False
    rate: int = 0
    host: str | None = None


def encode(p: Progress) -> bytes:
    d = asdict(p)
    if d["host"] is None:
        del d["host"]
    body = json.dumps(d, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, VERSION, len(body)) + body


def decode(buf: bytes) -> Progress:
    if len(buf) < _HEAD.size:
        raise IntegrityError("the conversion record is truncated")
    magic, version, n = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise IntegrityError("the conversion record has a bad magic number")
    if version != VERSION:
        raise UnsupportedVersion(f"the conversion record has version {version}; this vdisk reads {VERSION}")
    if len(buf) != _HEAD.size + n:
        raise IntegrityError("the conversion record has a bad length")
    try:
        d = json.loads(buf[_HEAD.size:].decode())
        d["steps"] = [Step(**s) for s in d["steps"]]
        return Progress(**d)
    except (ValueError, TypeError, KeyError) as e:
        raise IntegrityError(f"the conversion record is damaged: {e}") from None
