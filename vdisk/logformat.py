"""On-disk encoding of the redo log (vdisk/journal.py): its record and its blocks.

The log lives in the PBA space, one block per *group*, the groups of an
*epoch* chained from a head that the last full commit allocated and named in
``disk/log``. A flush appends the records of the writes since the last one
as one or more groups (their payloads concatenated form the flush's record
stream) and syncs the data store once; a full commit ends the epoch. All
integers little-endian.

``disk/log`` - the current epoch, version 1::

    off  size  field
    0    1     record version (1)
    1    7     reserved, zero
    8    16    log id: random, new each epoch (a group of another epoch never matches)
    24   8     head: the PBA of the epoch's first group

A group, one block (version 1)::

    0    8     magic b"VDISKLOG"
    8    2     group format version (1)
    10   2     flags: bit 0 = the last group of its flush
    12   4     payload length in bytes
    16   16    log id of its epoch
    32   8     index of the group in the epoch (0 at the head)
    40   8     PBA of the next group (allocated before this one was written)
    48   8     writer: random, new each writable open
    56   32    hash (bytes 88-120) of the group before it; zero for group 0
    88   32    blake3 of bytes [0, 88) and the payload
    120  ..    payload: a piece of its flush's record stream; the rest is zero

The chain of hashes is what lets a writer that replayed an epoch go on
appending to it: a group left by a flush that never returned (dropped by
replay) is chained to the group before it as that flush wrote it, and the
group written there now differs at least in its writer, so the old group
can never continue the new chain.

Records of the stream (type byte first)::

    1  one block:   lba u64, pba u64, checksum (16 bytes)               33 bytes
    2  blocks:      lba u64, count u32, pieces u16, then per piece
                    pba u64 and length u32, then count checksums (16 bytes each)
    3  zero:        lba u64, count u64: blocks unmapped                  17 bytes

A record says what a write did to the running point, in terms the engine
replays deterministically: the blocks written at ``lba`` live at those PBAs
with those checksums (whether a block kept its VBA or took a new one follows
from the maps as replay finds them, exactly as it did when written).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3

from vdisk.errors import IntegrityError, UnsupportedVersion

LOG_RECORD_VERSION = 1
GROUP_VERSION = 1
GROUP_MAGIC = b"VDISKLOG"
FLAG_FLUSH_END = 1
CSUM = 16

_RECORD = struct.Struct("<B7x16sQ")
_HEAD = struct.Struct("<8sHHI16sQQQ32s")    # the group header up to its hash
HEADER_BYTES = _HEAD.size + 32

ONE, BLOCKS, ZERO = 1, 2, 3
_ONE = struct.Struct("<BQQ16s")
_BLOCKS = struct.Struct("<BQIH")
_PIECE = struct.Struct("<QI")
_ZERO = struct.Struct("<BQQ")
MAX_PIECES = 0xFFFF


@dataclass
class LogRecord:
    log_id: bytes
    head: int


def encode_log(r: LogRecord) -> bytes:
    return _RECORD.pack(LOG_RECORD_VERSION, r.log_id, r.head)


def decode_log(buf) -> LogRecord | None:
    if buf is None:
        return None
    buf = bytes(buf)
    if len(buf) < 1 or buf[0] != LOG_RECORD_VERSION:
        raise UnsupportedVersion(f"redo log record has version {buf[:1].hex() or 'none'}: upgrade vdisk")
    if len(buf) != _RECORD.size:
        raise IntegrityError(f"redo log record is damaged ({len(buf)} bytes)")
    _v, log_id, head = _RECORD.unpack(buf)
    return LogRecord(log_id, head)


# ------------------------------------------------------------------ records

def one(lba: int, pba: int, csum: bytes) -> bytes:
    return _ONE.pack(ONE, lba, pba, csum)


def blocks(lba: int, count: int, pieces: list[tuple[int, int]], sums: list[bytes]) -> bytes:
    parts = [_BLOCKS.pack(BLOCKS, lba, count, len(pieces))]
    parts.extend(_PIECE.pack(p, n) for p, n in pieces)
    parts.extend(sums)
    return b"".join(parts)


def zero(lba: int, count: int) -> bytes:
    return _ZERO.pack(ZERO, lba, count)


def parse(stream: bytes):
    """Yield ``(type, lba, count, pieces, sums)`` for each record of a flush's stream.

    The stream was checksummed group by group; a record that does not parse
    is damage the hashes cannot explain.
    """
    pos, end = 0, len(stream)
    try:
        while pos < end:
            kind = stream[pos]
            if kind == ONE:
                _k, lba, pba, csum = _ONE.unpack_from(stream, pos)
                pos += _ONE.size
                yield ONE, lba, 1, [(pba, 1)], [csum]
            elif kind == BLOCKS:
                _k, lba, count, npieces = _BLOCKS.unpack_from(stream, pos)
                pos += _BLOCKS.size
                pieces = [_PIECE.unpack_from(stream, pos + i * _PIECE.size) for i in range(npieces)]
                pos += npieces * _PIECE.size
                sums = [stream[pos + i * CSUM:pos + (i + 1) * CSUM] for i in range(count)]
                pos += count * CSUM
                if pos > end or sum(n for _p, n in pieces) != count:
                    raise struct.error("a blocks record runs past its stream")
                yield BLOCKS, lba, count, pieces, sums
            elif kind == ZERO:
                _k, lba, count = _ZERO.unpack_from(stream, pos)
                pos += _ZERO.size
                yield ZERO, lba, count, [], []
            else:
                raise struct.error(f"record type {kind}")
    except struct.error as e:
        raise IntegrityError(f"redo log: a record does not parse ({e}): the disk is damaged") from None


# ------------------------------------------------------------------ groups

def payload_bytes(block_size: int) -> int:
    return block_size - HEADER_BYTES


def encode_group(block_size: int, log_id: bytes, index: int, next_pba: int, writer: int, prev: bytes,
                 payload, last: bool) -> tuple[bytes, bytes]:
    """The group's block and its hash (the next group's ``prev``)."""
    head = _HEAD.pack(GROUP_MAGIC, GROUP_VERSION, FLAG_FLUSH_END if last else 0, len(payload), log_id,
                      index, next_pba, writer, prev)
    h = blake3.blake3(head)
    h.update(payload)
    digest = h.digest(32)
    out = bytearray(block_size)
    out[:_HEAD.size] = head
    out[_HEAD.size:HEADER_BYTES] = digest
    out[HEADER_BYTES:HEADER_BYTES + len(payload)] = payload
    return bytes(out), digest


@dataclass
class Group:
    index: int
    next_pba: int
    last: bool
    payload: bytes
    digest: bytes


def decode_group(buf, log_id: bytes, index: int, prev: bytes) -> Group | None:
    """The group ``index`` of epoch ``log_id`` after the group hashed ``prev``, or
    None where the chain ends.

    The chain ends at the first block that is not that group: never
    written, a group of another epoch or chain, or torn by a crash (its
    hash fails).
    """
    buf = bytes(buf)
    if len(buf) < HEADER_BYTES or buf[:8] != GROUP_MAGIC:
        return None
    magic, version, flags, length, gid, gindex, next_pba, _writer, gprev = _HEAD.unpack_from(buf)
    if gid != log_id or gindex != index or gprev != prev:
        return None
    if version != GROUP_VERSION:
        raise UnsupportedVersion(f"redo log group has version {version}: upgrade vdisk")
    if HEADER_BYTES + length > len(buf):
        return None
    payload = buf[HEADER_BYTES:HEADER_BYTES + length]
    h = blake3.blake3(buf[:_HEAD.size])
    h.update(payload)
    digest = h.digest(32)
    if digest != buf[_HEAD.size:HEADER_BYTES]:
        return None
    return Group(gindex, next_pba, bool(flags & FLAG_FLUSH_END), payload, digest)


NO_PREV = bytes(32)
