"""The replication stream: what ``vdisk send`` writes and ``vdisk receive`` reads.

A stream recreates one snapshot on another disk: in full, or as the change
from a base snapshot the receiving disk already has. It is a sequence of
records: one BEGIN, then DATA and ZERO records in ascending offset order
(never overlapping), then one END. docs/STREAM.md describes it for people;
this docstring is the reference. Stream format version 1; a reader refuses
a version it does not know (:class:`~vdisk.errors.UnsupportedVersion`).

All integers little-endian. Every record::

    off    size  field
    0      4     magic b"VDSR"
    4      1     type: 1 BEGIN, 2 DATA, 3 ZERO, 4 END
    5      3     reserved, zero
    8      8     index: 0 for BEGIN, then 1, 2, ... (a dropped, repeated or
                 reordered record is caught here)
    16     4     payload length n (at most MAX_PAYLOAD)
    20     4     reserved, zero
    24     n     payload (below)
    24+n   32    chain: blake3 of (the previous record's chain || bytes 0 to 24
                 of this record || blake3 of the payload); before BEGIN, the
                 previous chain is 32 zero bytes

So each record is checksummed by blake3, and since each chain value covers
the one before, END's chain is a blake3 of the whole stream: a stream cut
short, spliced from two streams or with records swapped fails there or
earlier. (The payload enters through its own blake3, 32 bytes, so that a
receiver can keep that digest with the data it stages and check it again
later without hashing the data twice.)

BEGIN payload (``_BEGIN`` and two names)::

    0      4     stream format version (1)
    4      4     block size of the sending disk (bytes)
    8      8     size of the snapshot (bytes): the received snapshot's size
    16     8     snapshot created, Unix time in nanoseconds
    24     16    snapshot id (:func:`vdisk.replicate.identity.snapshot_id`)
    40     16    base snapshot id; zeros for a full stream
    56     8     base snapshot created (ns); 0 for a full stream
    64     8     resume offset: the stream holds the changes at and after
                 this byte (0: all of them; else it continues an interrupted
                 receive, see resume tokens below)
    72     8     bytes the DATA and ZERO records cover together (for progress,
                 and checked against END)
    80     8     reserved, zero
    88     2     length of the snapshot's name, then the name (UTF-8)
    ..     2     length of the base's name, then the name; 0 for a full stream

DATA payload: offset (8), then the bytes to write there (n - 8 of them).
ZERO payload: offset (8), length (8): the range reads as zeros (a hole).

END payload::

    0      8     number of DATA and ZERO records
    8      8     data bytes (the sum of DATA lengths)
    16     8     bytes covered by ZERO records

A resume token (``vdisk receive --resume-token``) names where an
interrupted receive stands: the snapshot and base ids and the byte offset
up to which the receiver holds every change. ``vdisk send --resume TOKEN``
then writes a stream of the changes from that offset on; it is a whole
stream of its own (BEGIN, records, END, its own chain).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3

from vdisk.errors import IntegrityError, InvalidArgument, UnsupportedVersion, quote

STREAM_VERSION = 1
MAGIC = b"VDSR"
BEGIN, DATA, ZERO, END = 1, 2, 3, 4
TYPE_NAMES = {BEGIN: "BEGIN", DATA: "DATA", ZERO: "ZERO", END: "END"}
CHAIN_BYTES = 32
ID_BYTES = 16
# The largest payload a reader accepts: a damaged length must not make it
# allocate gigabytes. Senders write DATA records of DATA_CHUNK bytes.
MAX_PAYLOAD = 16 << 20
DATA_CHUNK = 1 << 20

_HEAD = struct.Struct("<4sB3xQI4x")
_BEGIN = struct.Struct("<IIQQ16s16sQQQ8x")
_OFFSET = struct.Struct("<Q")
_ZERO = struct.Struct("<QQ")
_END = struct.Struct("<QQQ")
_NAME = struct.Struct("<H")
NO_ID = bytes(ID_BYTES)


class StreamDamaged(IntegrityError):
    """The replication stream fails its checks: a flipped byte, a record out of
    place, a stream spliced from two. Nothing of it is kept."""


class StreamTruncated(StreamDamaged):
    """The stream ended before its END record (a cut pipe, a killed sender,
    a short file). What was received intact is kept for ``--resume``."""


@dataclass
class Header:
    """What BEGIN says: the snapshot, its base, and what the stream holds."""

    name: str
    size: int
    block_size: int
    created_ns: int
    snap_id: bytes
    base_name: str | None = None
    base_id: bytes = NO_ID
    base_created_ns: int = 0
    resume_offset: int = 0
    covered_bytes: int = 0
    version: int = STREAM_VERSION

    @property
    def incremental(self) -> bool:
        return self.base_name is not None

    def encode(self) -> bytes:
        name = self.name.encode()
        base = (self.base_name or "").encode()
        return (_BEGIN.pack(self.version, self.block_size, self.size, self.created_ns, self.snap_id, self.base_id,
                            self.base_created_ns, self.resume_offset, self.covered_bytes)
                + _NAME.pack(len(name)) + name + _NAME.pack(len(base)) + base)

    @classmethod
    def decode(cls, payload: bytes) -> "Header":
        if len(payload) < 4:
            raise StreamDamaged("replication stream is damaged: its BEGIN record is too short")
        version = struct.unpack_from("<I", payload)[0]
        if version != STREAM_VERSION:
            raise UnsupportedVersion(f"replication stream has format version {version}; this vdisk reads "
                                     f"version {STREAM_VERSION}: receive it with the vdisk that sent it")
        try:
            fields = _BEGIN.unpack_from(payload)
            off = _BEGIN.size
            names = []
            for _ in range(2):
                (n,) = _NAME.unpack_from(payload, off)
                if len(payload) < off + 2 + n:
                    raise ValueError
                names.append(payload[off + 2:off + 2 + n].decode())
                off += 2 + n
            if off != len(payload):
                raise ValueError
        except (struct.error, ValueError, UnicodeDecodeError):
            raise StreamDamaged("replication stream is damaged: its BEGIN record does not decode") from None
        _v, bs, size, created, snap_id, base_id, base_created, resume, covered = fields
        h = cls(names[0], size, bs, created, snap_id, names[1] or None, base_id, base_created, resume, covered)
        if (not h.name or bs < 512 or bs & (bs - 1) or size <= 0 or resume > size
                or (h.base_name is None) != (base_id == NO_ID)):
            raise StreamDamaged("replication stream is damaged: its BEGIN record holds impossible values")
        return h

    def same_stream(self, other: "Header") -> bool:
        """Whether ``other`` is (a resumption of) the stream this header began."""
        return (self.snap_id, self.base_id, self.name, self.base_name, self.size) == \
            (other.snap_id, other.base_id, other.name, other.base_name, other.size)


@dataclass
class Record:
    type: int
    index: int
    offset: int = 0
    length: int = 0                 # DATA: len(data); ZERO: the range's length
    data: bytes | memoryview = b""
    header: Header | None = None     # BEGIN
    totals: tuple[int, int, int] | None = None     # END: records, data bytes, zero bytes
    digest: bytes = b""             # blake3 of the payload, as the chain took it


def chain_of(previous: bytes, head: bytes, payload_digest: bytes) -> bytes:
    """A record's chain value: blake3 of the previous one, its header and its payload's blake3."""
    return blake3.blake3(previous + head + payload_digest).digest(CHAIN_BYTES)


def payload_digest(rtype: int, offset: int, length: int, data=b"") -> bytes:
    """blake3 of the payload of a DATA or ZERO record, from its fields."""
    if rtype == DATA:
        h = blake3.blake3(_OFFSET.pack(offset))
        h.update(data)
        return h.digest(CHAIN_BYTES)
    return blake3.blake3(_ZERO.pack(offset, length)).digest(CHAIN_BYTES)


class StreamWriter:
    """Writes one stream to a binary file object (a pipe, a file)."""

    def __init__(self, out):
        self.out = out
        self.index = 0
        self.chain = bytes(CHAIN_BYTES)
        self.bytes_written = 0
        self.records = 0
        self.data_bytes = 0
        self.zero_bytes = 0

    def _record(self, rtype: int, *parts):
        n = sum(len(p) for p in parts)
        if n > MAX_PAYLOAD:
            raise InvalidArgument(f"stream record of {n} bytes is larger than {MAX_PAYLOAD}")
        head = _HEAD.pack(MAGIC, rtype, self.index, n)
        body = blake3.blake3()
        for p in parts:
            body.update(p)
        self.chain = chain_of(self.chain, head, body.digest(CHAIN_BYTES))
        self.out.write(head)
        for p in parts:
            self.out.write(p)
        self.out.write(self.chain)
        self.bytes_written += _HEAD.size + n + CHAIN_BYTES
        self.index += 1

    def begin(self, header: Header):
        self._record(BEGIN, header.encode())

    def data(self, offset: int, data):
        self._record(DATA, _OFFSET.pack(offset), data)
        self.records += 1
        self.data_bytes += len(data)

    def zero(self, offset: int, length: int):
        self._record(ZERO, _ZERO.pack(offset, length))
        self.records += 1
        self.zero_bytes += length

    def end(self):
        self._record(END, _END.pack(self.records, self.data_bytes, self.zero_bytes))


class StreamReader:
    """Reads and checks one stream from a binary file object, record by record.

    :meth:`next` returns the next record whose checksum, place and fields
    checked out, or raises StreamDamaged (StreamTruncated at an early end
    of the input). Records after BEGIN must lie inside the snapshot's size,
    in ascending offset order from the header's resume offset; END must
    agree with what came before it and with BEGIN, and nothing may follow.
    """

    def __init__(self, inp):
        self.inp = inp
        self.index = 0
        self.chain = bytes(CHAIN_BYTES)
        self.bytes_read = 0
        self.header: Header | None = None
        self.pos = 0                # every change before this offset has been read
        self.records = self.data_bytes = self.zero_bytes = 0
        self.ended = False

    def _read(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.inp.readinto(view[got:])
            if not k:
                if got == 0 and what == "record":
                    raise StreamTruncated(self._cut("before its END record"))
                raise StreamTruncated(self._cut(f"inside record {self.index}"))
            got += k
        self.bytes_read += n
        return bytes(buf)

    def _cut(self, where: str) -> str:
        return f"replication stream ended {where} (after {self.bytes_read} bytes, {self.index} records)"

    def _damaged(self, what: str) -> StreamDamaged:
        return StreamDamaged(f"replication stream is damaged at record {self.index} "
                             f"(byte {self.bytes_read}): {what}")

    def next(self) -> Record:
        if self.ended:
            raise InvalidArgument("the stream has ended")
        head = self._read(_HEAD.size, "record")
        magic, rtype, index, n = _HEAD.unpack(head)
        if magic != MAGIC:
            if self.index == 0:
                raise StreamDamaged("input is not a vdisk replication stream (no VDSR magic at its start)")
            raise self._damaged("bad record magic")
        if head[5:8] != b"\0\0\0" or head[20:24] != b"\0\0\0\0" or rtype not in TYPE_NAMES:
            raise self._damaged("bad record header")
        if index != self.index:
            raise self._damaged(f"record {index} where record {self.index} belongs (records out of order)")
        if n > MAX_PAYLOAD:
            raise self._damaged(f"record length {n} is over the limit {MAX_PAYLOAD}")
        payload = self._read(n, "payload")
        chain = self._read(CHAIN_BYTES, "payload")
        digest = blake3.blake3(payload).digest(CHAIN_BYTES)
        want = chain_of(self.chain, head, digest)
        if chain != want:
            raise self._damaged(f"{TYPE_NAMES[rtype]} record fails its blake3 check")
        self.chain = want
        rec = self._decode(rtype, payload)
        rec.digest = digest
        self.index += 1
        return rec

    def _decode(self, rtype: int, payload: bytes) -> Record:
        if (rtype == BEGIN) != (self.index == 0):
            raise self._damaged("BEGIN must come first, and only first")
        if rtype == BEGIN:
            self.header = Header.decode(payload)
            self.pos = self.header.resume_offset
            return Record(BEGIN, 0, header=self.header)
        h = self.header
        if rtype == END:
            try:
                totals = _END.unpack(payload)
            except struct.error:
                raise self._damaged("END record does not decode") from None
            mine = (self.records, self.data_bytes, self.zero_bytes)
            if totals != mine or h.covered_bytes != mine[1] + mine[2]:
                raise self._damaged(f"END says {totals} (records, data and zero bytes), the stream held "
                                    f"{mine}, BEGIN promised {h.covered_bytes} bytes: records are missing")
            self.ended = True
            # Nothing may follow END: a stream with more is not this stream.
            if self.inp.read(1):
                raise self._damaged("bytes follow the END record")
            return Record(END, self.index, totals=totals)
        if rtype == DATA:
            if len(payload) <= 8:
                raise self._damaged("DATA record holds no data")
            (offset,) = _OFFSET.unpack_from(payload)
            data = memoryview(payload)[8:]
            length = len(data)
        else:
            if len(payload) != _ZERO.size:
                raise self._damaged("ZERO record does not decode")
            offset, length = _ZERO.unpack(payload)
            data = b""
            if not length:
                raise self._damaged("ZERO record of length 0")
        if offset < self.pos or offset + length > h.size:
            raise self._damaged(f"{TYPE_NAMES[rtype]} record at {offset}+{length} is out of order or outside "
                                f"the snapshot (size {h.size}; the stream is at {self.pos})")
        self.pos = offset + length
        self.records += 1
        if rtype == DATA:
            self.data_bytes += length
        else:
            self.zero_bytes += length
        return Record(rtype, self.index, offset, length, data)


def encode_token(snap_id: bytes, base_id: bytes, offset: int) -> str:
    """The resume token of an interrupted receive: where the sender starts again."""
    body = f"{STREAM_VERSION}-{snap_id.hex()}-{base_id.hex()}-{offset}"
    return f"{body}-{blake3.blake3(body.encode()).hexdigest(4)}"


def decode_token(token: str) -> tuple[bytes, bytes, int]:
    """(snapshot id, base id, offset) of a token; InvalidArgument for a mistyped one."""
    parts = token.strip().split("-")
    bad = InvalidArgument(f"bad resume token {quote(token)}: copy it whole from vdisk receive --resume-token")
    if len(parts) != 5 or blake3.blake3("-".join(parts[:4]).encode()).hexdigest(4) != parts[4]:
        raise bad
    if parts[0] != str(STREAM_VERSION):
        raise UnsupportedVersion(f"resume token of stream format {parts[0]}; this vdisk writes "
                                 f"version {STREAM_VERSION}")
    try:
        snap_id, base_id, offset = bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3])
    except ValueError:
        raise bad from None
    if len(snap_id) != ID_BYTES or len(base_id) != ID_BYTES or offset < 0:
        raise bad
    return snap_id, base_id, offset
