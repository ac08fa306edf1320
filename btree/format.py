"""On-disk encoding of B+tree nodes, tree records and the store header.

Everything the B+tree writes to its node store is encoded and decoded here and
nowhere else. All integers are little-endian.

Node, format version 1 (``NODE_VERSION``)::

    off  size  field
    0    4     magic b"VBTN"
    4    1     format version (1)
    5    1     kind: 1 = leaf, 2 = inner
    6    2     n, number of entries (u16)
    8    1     key type: 0 = unsigned 64-bit int, 1 = fixed-width bytes
    9    1     key width in bytes (8 for u64)
    10   1     value type: 0 = u64, 1 = fixed-width bytes (inner: 0, child ids)
    11   1     value width in bytes (inner: 8)
    12   4     reserved, zero
    16   8     seq: operation sequence number that last wrote the node
    24   8     node id (the node's own key, so a node stored or read under the
               wrong id is caught)
    32   16    checksum: blake3 of bytes [0, 32) + [48, end), first 16 bytes
    48   n*kw  keys, ascending
    ..   n*vw  leaf: values; inner: child node ids (u64)

An inner node with n children holds n keys; key i (i >= 1) is the lower bound
of child i's subtree. Key 0 is not used for routing and carries no meaning (it
is whatever bound the node was created with), so checkers ignore it.

A node never exceeds ``NODE_BYTES``: 4096 minus the 16-byte header LMDB puts on
an overflow page, so each node is exactly one page of LMDB's file.

Tree record (meta key ``b"tree/" + name``), version 1::

    off  size  field
    0    1     record version (1)
    1    1     flags: bit 0 = frozen (a snapshot: read-only)
    2    1     height: 1 = the root is a leaf
    3    1     key type      4  1  key width
    5    1     value type    6  1  value width
    7    1     reserved, zero
    8    8     root node id
    16   8     snap_seq: seq of the newest snapshot taken of this tree; nodes
               with seq <= snap_seq may be shared and are never modified
    24   8     entry count
    32   8     seq at which the tree record was created

Store header (meta key ``b"format"``)::

    0    8     magic b"VBTSTORE"
    8    4     store format version (1)
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from functools import cached_property

import blake3

from vdisk.errors import CorruptNode, IntegrityError, UnsupportedVersion

from .packed import PackedBytes

NODE_MAGIC = b"VBTN"
NODE_VERSION = 1
NODE_BYTES = 4080
HEADER_BYTES = 48
CHECKSUM_BYTES = 16

LEAF = 1
INNER = 2

T_U64 = 0
T_BYTES = 1

STORE_MAGIC = b"VBTSTORE"
STORE_VERSION = 1

TREE_RECORD_VERSION = 1
FLAG_FROZEN = 1

_HEAD = struct.Struct("<4sBBHBBBBIQQ16s")
_HEAD32 = struct.Struct("<4sBBHBBBBIQQ")  # the header without its checksum
_TREE = struct.Struct("<BBBBBBBBQQQQ")
_STORE = struct.Struct("<8sI")
_U64 = struct.Struct("<Q")
assert _HEAD.size == HEADER_BYTES and _HEAD32.size == 32

# Leaves keep u64 fields in array('Q'): encoding one is a memory copy instead
# of converting every int, which is most of what a commit costs. The array's
# bytes are native order, so a big-endian host swaps them.
U64_ARRAY = "Q"
assert array(U64_ARRAY).itemsize == 8
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class Layout:
    """The fixed widths of one tree's keys and values.

    A field is either an unsigned 64-bit int (``"u64"``) or a byte string of
    fixed width (``"bytes:N"``, 1 <= N <= 255). Bytes keys sort bytewise.
    """

    key: str = "u64"
    value: str = "u64"

    def __post_init__(self):
        for spec in (self.key, self.value):
            _parse_field(spec)

    # Cached: the tree asks for these on every node it writes.
    @cached_property
    def key_type(self) -> tuple[int, int]:
        return _parse_field(self.key)

    @cached_property
    def value_type(self) -> tuple[int, int]:
        return _parse_field(self.value)

    @cached_property
    def leaf_capacity(self) -> int:
        return (NODE_BYTES - HEADER_BYTES) // (self.key_type[1] + self.value_type[1])

    @cached_property
    def inner_capacity(self) -> int:
        return (NODE_BYTES - HEADER_BYTES) // (self.key_type[1] + 8)

    @classmethod
    def from_types(cls, kt: int, kw: int, vt: int, vw: int) -> "Layout":
        key = (kt, kw, vt, vw)
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = cls(_field_spec(kt, kw), _field_spec(vt, vw))
            if len(_LAYOUTS) < 4096:  # bounded: field types come from disk
                _LAYOUTS[key] = layout
        return layout


_LAYOUTS: dict[tuple, Layout] = {}


def _parse_field(spec: str) -> tuple[int, int]:
    if spec == "u64":
        return T_U64, 8
    if spec.startswith("bytes:"):
        try:
            width = int(spec[6:])
        except ValueError:
            width = 0
        if 1 <= width <= 255:
            return T_BYTES, width
    raise ValueError(f"bad B+tree field spec {spec!r}: use 'u64' or 'bytes:N' with 1 <= N <= 255")


def _field_spec(ftype: int, width: int) -> str:
    if ftype == T_U64 and width == 8:
        return "u64"
    if ftype == T_BYTES and 1 <= width <= 255:
        return f"bytes:{width}"
    raise ValueError(f"field type {ftype} width {width}")


def u64_array(items=()) -> array:
    """An array('Q') of ``items`` (the in-memory form of a leaf's u64 field)."""
    return array(U64_ARRAY, items)


def _pack_field(ftype: int, width: int, items) -> bytes:
    if ftype == T_U64:
        if type(items) is array and _LITTLE:
            return items.tobytes()
        a = array(U64_ARRAY, items)
        if not _LITTLE:
            a.byteswap()
        return a.tobytes()
    if type(items) is PackedBytes:
        return bytes(items.buf)
    return b"".join(items)


_BYTES_STRUCTS: dict[tuple[int, int], struct.Struct] = {}


def _unpack_field(ftype: int, width: int, buf, off: int, n: int, leaf: bool):
    """u64 fields: array('Q') in a leaf, a list in an inner node (whose
    bisect on a list is faster; an inner node is rarely written). Bytes
    fields (keys; a leaf's bytes values are PackedBytes): a list of bytes."""
    if ftype == T_U64:
        a = array(U64_ARRAY)
        a.frombytes(memoryview(buf)[off:off + n * 8])
        if not _LITTLE:
            a.byteswap()
        return a if leaf else a.tolist()
    s = _BYTES_STRUCTS.get((n, width))
    if s is None:
        s = struct.Struct(f"{width}s" * n)
        if len(_BYTES_STRUCTS) < 4096:
            _BYTES_STRUCTS[(n, width)] = s
    return list(s.unpack_from(buf, off))


def _checksum(head: bytes, body: bytes) -> bytes:
    """blake3 of the header's first 32 bytes and the body (bytes objects).

    One call over a joined copy costs less than feeding blake3 twice.
    """
    return blake3.blake3(head[:32] + body).digest(CHECKSUM_BYTES)


def encode_node(node_id: int, seq: int, leaf: bool, layout: Layout, keys, vals) -> bytes:
    """Encode one node; ``vals`` are values (leaf) or child ids (inner).

    ``keys`` and ``vals`` are sequences: lists, array('Q') for u64 fields,
    or PackedBytes for bytes values (written as they are).
    """
    n = len(keys)
    kt, kw = layout.key_type
    if leaf:
        vt, vw = layout.value_type
        kind = LEAF
    else:
        vt, vw = T_U64, 8
        kind = INNER
    if HEADER_BYTES + n * (kw + vw) > NODE_BYTES:
        raise ValueError(f"node {node_id} with {n} entries does not fit in {NODE_BYTES} bytes")
    body = _pack_field(kt, kw, keys) + _pack_field(vt, vw, vals)
    if len(body) != n * (kw + vw) or len(vals) != n:
        # Wrong-width bytes fields would shift every entry after them.
        raise ValueError(f"node {node_id}: {n} keys and {len(vals)} values do not make "
                         f"{n} entries of {kw}+{vw} bytes")
    head = _HEAD32.pack(NODE_MAGIC, NODE_VERSION, kind, n, kt, kw, vt, vw, 0, seq, node_id)
    return head + _checksum(head, body) + body


@dataclass
class DecodedNode:
    node_id: int
    seq: int
    leaf: bool
    layout: Layout
    keys: list
    vals: list


def decode_node(node_id: int, buf) -> DecodedNode:
    """Decode and validate the framing of one node (not its key order).

    Raises :class:`CorruptNode` naming the node and what is wrong, and
    :class:`UnsupportedVersion` for a node from a newer format. A leaf's u64
    fields come back as array('Q'), everything else as lists.
    """
    if buf is None:
        raise CorruptNode(node_id, "missing from the node store")
    if len(buf) < HEADER_BYTES:
        raise CorruptNode(node_id, f"truncated: {len(buf)} bytes, header needs {HEADER_BYTES}")
    magic, version, kind, n, kt, kw, vt, vw, _res, seq, stored_id, csum = _HEAD.unpack_from(buf, 0)
    if magic != NODE_MAGIC:
        raise CorruptNode(node_id, f"bad magic {bytes(magic)!r}")
    if version != NODE_VERSION:
        if version > NODE_VERSION:
            raise UnsupportedVersion(
                f"metadata node {node_id} has format version {version}; this vdisk reads "
                f"version {NODE_VERSION}: upgrade vdisk")
        raise CorruptNode(node_id, f"unknown format version {version}")
    if kind not in (LEAF, INNER):
        raise CorruptNode(node_id, f"unknown node kind {kind}")
    try:
        layout = Layout.from_types(kt, kw, vt, vw) if kind == LEAF else Layout.from_types(kt, kw, T_U64, 8)
    except ValueError:
        raise CorruptNode(node_id, f"bad field types key={kt}/{kw} value={vt}/{vw}") from None
    if kind == INNER and (vt, vw) != (T_U64, 8):
        raise CorruptNode(node_id, "inner node whose children are not u64 ids")
    want = HEADER_BYTES + n * (kw + vw)
    if len(buf) != want:
        raise CorruptNode(node_id, f"length {len(buf)} bytes, {n} entries need {want}")
    if type(buf) is not bytes:
        buf = bytes(buf)
    if _checksum(buf, buf[HEADER_BYTES:]) != csum:
        raise CorruptNode(node_id, "checksum mismatch")
    if stored_id != node_id:
        raise CorruptNode(node_id, f"holds node {stored_id}'s content")
    leaf = kind == LEAF
    keys = _unpack_field(kt, kw, buf, HEADER_BYTES, n, leaf)
    off = HEADER_BYTES + n * kw
    if leaf and vt == T_BYTES:
        vals = PackedBytes(vw, buf=bytearray(memoryview(buf)[off:off + n * vw]))
    else:
        vals = _unpack_field(vt, vw, buf, off, n, leaf)
    return DecodedNode(node_id, seq, leaf, layout, keys, vals)


@dataclass
class TreeRecord:
    root: int
    height: int
    snap_seq: int
    count: int
    created_seq: int
    layout: Layout
    frozen: bool = False


def encode_tree_record(rec: TreeRecord) -> bytes:
    kt, kw = rec.layout.key_type
    vt, vw = rec.layout.value_type
    return _TREE.pack(TREE_RECORD_VERSION, FLAG_FROZEN if rec.frozen else 0, rec.height,
                      kt, kw, vt, vw, 0, rec.root, rec.snap_seq, rec.count, rec.created_seq)


def decode_tree_record(name: str, buf) -> TreeRecord:
    if buf is None or len(buf) != _TREE.size:
        raise IntegrityError(f"tree record {name!r} is damaged (length {0 if buf is None else len(buf)})")
    version, flags, height, kt, kw, vt, vw, _r, root, snap_seq, count, created = _TREE.unpack(bytes(buf))
    if version != TREE_RECORD_VERSION:
        raise UnsupportedVersion(f"tree record {name!r} has version {version}; this vdisk reads "
                                 f"{TREE_RECORD_VERSION}: upgrade vdisk")
    try:
        layout = Layout.from_types(kt, kw, vt, vw)
    except ValueError:
        raise IntegrityError(f"tree record {name!r} has bad field types") from None
    if height < 1:
        raise IntegrityError(f"tree record {name!r} has height {height}")
    return TreeRecord(root, height, snap_seq, count, created, layout, bool(flags & FLAG_FROZEN))


def encode_store_header() -> bytes:
    return _STORE.pack(STORE_MAGIC, STORE_VERSION)


def check_store_header(buf) -> None:
    if buf is None or len(buf) != _STORE.size:
        raise IntegrityError("B+tree store header is missing or damaged")
    magic, version = _STORE.unpack(bytes(buf))
    if magic != STORE_MAGIC:
        raise IntegrityError(f"not a vdisk B+tree store (magic {magic!r})")
    if version > STORE_VERSION:
        raise UnsupportedVersion(f"metadata was written by a newer vdisk (store format {version}, "
                                 f"this vdisk reads up to {STORE_VERSION}): upgrade vdisk")
    if version < 1:
        raise IntegrityError(f"B+tree store has unknown format version {version}")


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(buf) -> int:
    if buf is None or len(buf) != _U64.size:
        raise IntegrityError(f"B+tree counters are damaged (a counter record is "
                             f"{'missing' if buf is None else f'{len(buf)} bytes long'})")
    return _U64.unpack(bytes(buf))[0]
