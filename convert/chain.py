"""A redo-log chain as qemu sees it, and what each of its layers holds itself.

``read_chain`` asks ``qemu-img info --backing-chain`` for the layers (base
first) and refuses, in one line, what cannot become a vdisk: a missing or
unreadable layer, a loop (qemu detects it), layers of different virtual
sizes, an encrypted layer. ``own_extents`` asks ``qemu-img map`` for the
ranges a layer holds itself (depth 0): data, or zeros it wrote over its
backing; the ranges it leaves to its backing are not its own and cost
nothing to convert.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from vdisk.errors import ImageError, NotFound

from .qemu import qemu_img_json

FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi", "qed", "parallels")


@dataclass
class Layer:
    path: str                   # absolute
    format: str
    size: int                   # virtual size in bytes
    internal: list[str] = field(default_factory=list)   # internal snapshot names, oldest first

    @property
    def label(self) -> str:
        return os.path.basename(self.path)


@dataclass
class Extent:
    """A range a layer holds itself: ``data`` to copy, or zeros (``not data``)."""

    offset: int
    length: int
    data: bool


def read_chain(source: str, fmt: str | None = None) -> list[Layer]:
    """The layers of the chain whose top image is ``source``, base first."""
    if not os.path.exists(source):
        raise NotFound(f"{source}: no such image")
    args = ["info", "--backing-chain", "-U"]
    if fmt is not None:
        if fmt not in FORMATS:
            raise ImageError(f"unknown image format {fmt!r}: use one of {', '.join(FORMATS)}")
        args += ["-f", fmt]
    infos = qemu_img_json(*args, source, what=source)
    if isinstance(infos, dict):
        infos = [infos]
    layers = []
    for info in reversed(infos):
        path = os.path.abspath(info["filename"])
        if not _local_image(path):
            # A backing named by a protocol or a json: description (nbd,
            # null-co, ...): nothing vdisk can record and check on --resume.
            raise ImageError(f"{source}: layer {info['filename']} is not a local image file or block "
                             f"device; vdisk converts chains of files")
        if info.get("encrypted"):
            raise ImageError(f"{path}: encrypted images are not supported; decrypt it first "
                             f"(qemu-img convert --object secret,... -O qcow2)")
        if info["format"] not in FORMATS:
            raise ImageError(f"{path}: format {info['format']!r} is not supported")
        if info.get("data-file") or info.get("format-specific", {}).get("data", {}).get("data-file"):
            raise ImageError(f"{path}: qcow2 images with an external data file are not supported")
        names = [s["name"] for s in sorted(info.get("snapshots") or [], key=_snapshot_order)]
        _refuse_duplicate_names(path, info.get("snapshots") or [])
        layers.append(Layer(path, info["format"], int(info["virtual-size"]), names))
    sizes = {ly.size for ly in layers}
    if len(sizes) > 1:
        detail = ", ".join(f"{ly.label} {ly.size}" for ly in layers)
        raise ImageError(f"{source}: the layers have different virtual sizes ({detail}); "
                         f"resize them to one size first (qemu-img resize)")
    if layers[0].size <= 0:
        raise ImageError(f"{source}: the image is empty")
    return layers


def _local_image(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def _refuse_duplicate_names(path: str, snapshots: list[dict]):
    """qemu lets two internal snapshots share a name, but loads a state by
    name, finding the first: the second would silently read as the first."""
    seen: dict[str, str] = {}
    for s in snapshots:
        if s["name"] in seen:
            raise ImageError(f"{path}: internal snapshots {seen[s['name']]} and {s.get('id')} are both called "
                             f"{s['name']!r}, and qemu reads a snapshot by its name; delete one first "
                             f"(qemu-img snapshot -d {s['name']!r} deletes the older)")
        seen[s["name"]] = s.get("id")


def _snapshot_order(s: dict):
    # Creation order: qemu numbers snapshots as it takes them; the date breaks ties.
    sid = s.get("id", "")
    return (int(sid) if sid.isdigit() else 1 << 62, s.get("date-sec", 0), s.get("date-nsec", 0))


def own_extents(layer: Layer, flat: bool = False) -> list[Extent]:
    """The ranges ``layer`` holds itself, in offset order (``flat``: the ranges
    any layer of its chain holds, as the image reads)."""
    out: list[Extent] = []
    for e in qemu_img_json("map", "-U", "-f", layer.format, layer.path, what=layer.path):
        if (e.get("depth", 0) != 0 and not flat) or not e.get("present", True):
            continue
        data = bool(e.get("data")) and not e.get("zero")
        off, ln = int(e["start"]), int(e["length"])
        if out and out[-1].data == data and out[-1].offset + out[-1].length == off:
            out[-1].length += ln
        else:
            out.append(Extent(off, ln, data))
    return out
