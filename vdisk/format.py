"""On-disk encoding of a disk container's own records (not the B+tree's).

A container is a directory::

    DISK/
      meta/      LMDB environment: B+tree nodes and the records below
      data       the PBA space: block p lives at byte p * block_size (sparse)
      lock       flock()ed by the one writer; holds its PID

Records live in the B+tree store's meta database, under ``disk/``. All
integers little-endian.

``disk/config`` - version 1::

    off  size  field
    0    8     magic b"VDISKCFG"
    8    4     container format version: 1, or 2 once the disk has a redo log
               (``disk/log``, vdisk/logformat.py), which a reader of version 1
               would not replay
    12   4     block size in bytes
    16   8     disk size in bytes
    24   8     created, Unix time in nanoseconds

``disk/state`` - counters of the running point, version 1::

    0    1     record version (1)
    1    7     reserved, zero
    8    8     vba_next: the next VBA to hand out
    16   8     vba_watermark: first VBA born after the running point's newest
               snapshot; VBAs below it may be shared with snapshots
    24   8     pba_end: blocks in the PBA space (the data file's extent)
    32   2     length of the parent snapshot's name, then the name (UTF-8);
               0 when the running point has no snapshot

``disk/snap/<name>`` - one snapshot, version 1::

    0    1     record version (1)
    1    7     reserved, zero
    8    8     created, Unix time in nanoseconds
    16   8     seq of the B+tree forest when taken
    24   8     vba_watermark: VBAs below it existed when it was taken
    32   8     disk size in bytes when taken
    40   2     length of the parent snapshot's name, then the name (UTF-8)

``disk/deleting`` - a snapshot deletion in progress (at most one), version 1.
Written in the commit that removes the snapshot's record and tree; deleted in
the commit that frees its last blocks and nodes. While it exists, the nodes
it lists are still stored and the VBAs their leaves map may still be in the
VBA -> PBA map: they belong to the deletion, not to any tree::

    0    1     record version (1)
    1    7     reserved, zero
    8    8     floor_vba: the deleted snapshot's parent's watermark (0 if none);
               VBAs below it are the parent's, never candidates
    16   8     parent_seq + 1: the parent's forest seq plus one (0 if none);
               trees newer than the parent may share the candidates
    24   8     number of node ids that follow the name
    32   2     length of the deleted snapshot's name, then the name (UTF-8)
    ..   8*n   ids of the nodes only the deleted snapshot reached (u64 each)

``disk/anchor`` - the anchor of an online conversion (absent otherwise),
version 1. The anchor is a second writable LBA -> VBA tree, ``anchor``, into
which a conversion writes the source chain's layers and from which it takes
their snapshots, while clients write the running point. The two hand out
VBAs from disjoint ranges - the anchor below ``vba_limit``, the running point
from it up - so every client VBA is born after the anchor's last snapshot::

    0    1     record version (1)
    1    7     reserved, zero
    8    8     vba_next: the anchor's next VBA
    16   8     vba_watermark: the first VBA born after the anchor's newest snapshot
    24   8     vba_limit: the anchor's VBAs stay below it
    32   2     length of the anchor's parent snapshot's name, then the name (UTF-8)

The snapshot's LBA -> VBA tree is the B+tree ``snap/<name>``; the running
point's is ``lba``; ``vba`` maps VBA -> PBA extents, ``csum`` VBA -> blake3
(16 bytes) per block, ``free`` PBA -> length of free extents.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass

from vdisk.errors import IntegrityError, UnsupportedVersion

CONFIG_MAGIC = b"VDISKCFG"
CONTAINER_VERSION = 2
RECORD_VERSION = 1

_CONFIG = struct.Struct("<8sIIQQ")
_STATE = struct.Struct("<B7xQQQH")
_SNAP = struct.Struct("<B7xQQQQH")
_DELETING = struct.Struct("<B7xQQQH")
_ANCHOR = struct.Struct("<B7xQQQH")


@dataclass
class Config:
    block_size: int
    size: int
    created_ns: int
    version: int = CONTAINER_VERSION


def encode_config(c: Config) -> bytes:
    return _CONFIG.pack(CONFIG_MAGIC, c.version, c.block_size, c.size, c.created_ns)


def decode_config(buf) -> Config:
    if buf is None:
        raise IntegrityError("container has no configuration record: not a vdisk disk, or damaged")
    if len(buf) != _CONFIG.size:
        raise IntegrityError(f"configuration record is damaged ({len(buf)} bytes)")
    magic, version, bs, size, created = _CONFIG.unpack(bytes(buf))
    if magic != CONFIG_MAGIC:
        raise IntegrityError("configuration record has a bad magic: not a vdisk disk")
    if bs < 512 or bs > 65536 or bs & (bs - 1) or size <= 0 or size % bs:
        raise IntegrityError(f"configuration record is damaged (block size {bs}, size {size})")
    if version > CONTAINER_VERSION:
        raise UnsupportedVersion(f"disk was written by a newer vdisk (container format {version}, "
                                 f"this vdisk reads up to {CONTAINER_VERSION}): upgrade vdisk")
    return Config(bs, size, created, version)


def _name_tail(name: str | None) -> bytes:
    raw = (name or "").encode()
    return raw


def _read_name(buf: bytes, off: int, n: int, what: str) -> str | None:
    if len(buf) != off + n:
        raise IntegrityError(f"{what} record is damaged (length {len(buf)})")
    try:
        return buf[off:off + n].decode() or None
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} record is damaged (its name is not UTF-8)") from None


@dataclass
class State:
    vba_next: int
    vba_watermark: int
    pba_end: int
    parent: str | None


def encode_state(s: State) -> bytes:
    raw = _name_tail(s.parent)
    return _STATE.pack(RECORD_VERSION, s.vba_next, s.vba_watermark, s.pba_end, len(raw)) + raw


def decode_state(buf) -> State:
    if buf is None or len(buf) < _STATE.size:
        raise IntegrityError("running point record is missing or damaged")
    buf = bytes(buf)
    version, vba_next, wm, pba_end, n = _STATE.unpack_from(buf)
    if version != RECORD_VERSION:
        raise UnsupportedVersion(f"running point record has version {version}: upgrade vdisk")
    return State(vba_next, wm, pba_end, _read_name(buf, _STATE.size, n, "running point"))


@dataclass
class SnapshotRecord:
    name: str
    created_ns: int
    seq: int
    vba_watermark: int
    size: int
    parent: str | None


def encode_snapshot(s: SnapshotRecord) -> bytes:
    raw = _name_tail(s.parent)
    return _SNAP.pack(RECORD_VERSION, s.created_ns, s.seq, s.vba_watermark, s.size, len(raw)) + raw


def decode_snapshot(name: str, buf) -> SnapshotRecord:
    if buf is None or len(buf) < _SNAP.size:
        raise IntegrityError(f"snapshot record {name!r} is missing or damaged")
    buf = bytes(buf)
    version, created, seq, wm, size, n = _SNAP.unpack_from(buf)
    if version != RECORD_VERSION:
        raise UnsupportedVersion(f"snapshot record {name!r} has version {version}: upgrade vdisk")
    return SnapshotRecord(name, created, seq, wm, size, _read_name(buf, _SNAP.size, n, f"snapshot {name!r}"))


@dataclass
class DeletionRecord:
    name: str
    floor_vba: int
    parent_seq: int | None
    node_ids: list[int]


def encode_deletion(d: DeletionRecord) -> bytes:
    raw = d.name.encode()
    pseq = 0 if d.parent_seq is None else d.parent_seq + 1
    ids = array.array("Q", d.node_ids)
    if sys.byteorder != "little":
        ids.byteswap()
    return _DELETING.pack(RECORD_VERSION, d.floor_vba, pseq, len(ids), len(raw)) + raw + ids.tobytes()


def decode_deletion(buf) -> DeletionRecord:
    if buf is None or len(buf) < _DELETING.size:
        raise IntegrityError("snapshot deletion record is damaged")
    buf = bytes(buf)
    version, floor_vba, pseq, count, n = _DELETING.unpack_from(buf)
    if version != RECORD_VERSION:
        raise UnsupportedVersion(f"snapshot deletion record has version {version}: upgrade vdisk")
    off = _DELETING.size + n
    if len(buf) != off + 8 * count:
        raise IntegrityError(f"snapshot deletion record is damaged (length {len(buf)})")
    ids = array.array("Q")
    ids.frombytes(buf[off:])
    if sys.byteorder != "little":
        ids.byteswap()
    return DeletionRecord(buf[_DELETING.size:off].decode(), floor_vba, pseq - 1 if pseq else None, list(ids))


@dataclass
class AnchorRecord:
    vba_next: int
    vba_watermark: int
    vba_limit: int
    parent: str | None


def encode_anchor(a: AnchorRecord) -> bytes:
    raw = _name_tail(a.parent)
    return _ANCHOR.pack(RECORD_VERSION, a.vba_next, a.vba_watermark, a.vba_limit, len(raw)) + raw


def decode_anchor(buf) -> AnchorRecord:
    if buf is None or len(buf) < _ANCHOR.size:
        raise IntegrityError("conversion anchor record is damaged")
    buf = bytes(buf)
    version, vba_next, wm, limit, n = _ANCHOR.unpack_from(buf)
    if version != RECORD_VERSION:
        raise UnsupportedVersion(f"conversion anchor record has version {version}: upgrade vdisk")
    return AnchorRecord(vba_next, wm, limit, _read_name(buf, _ANCHOR.size, n, "conversion anchor"))
