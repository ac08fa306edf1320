"""Where a receive keeps what it has read until the whole stream checked out.

``DISK/receiving/`` holds two files; the disk itself is not touched until
the stream's END record has been read and every check passed:

* ``ops`` - the stream's DATA and ZERO records as they passed their checks,
  appended in order. Each op::

      off   size  field
      0     1     type: 2 DATA, 3 ZERO (as in the stream)
      1     7     reserved, zero
      8     8     offset (bytes)
      16    8     length (bytes)
      24    32    blake3 of the stream record's payload (as its chain took
                  it: DATA offset and data, ZERO offset and length)
      56    n     DATA: the data (n = length); ZERO: nothing

* ``state.json`` - written atomically at each checkpoint, after ``ops`` is
  synced: the stream's header, ``offset`` (every change before this byte is
  in ``ops``), ``ops_bytes`` (the length of ``ops`` that holds them; a
  longer file is cut back to it), ``staged_bytes`` (what those ops cover),
  ``phase`` ("receiving", then "applying" once the whole stream checked
  out), whether the receive created the disk, and ``direct``: a full
  stream into a disk the receive created writes straight onto that disk's
  running point instead of ``ops`` (nothing else can see a disk that has no
  snapshot and did not exist before), and a checkpoint flushes the disk.

A crash leaves the last checkpoint; a resumed receive continues from its
``offset`` (the resume token names it). See :mod:`vdisk.replicate.receive`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

from vdisk.container import fsync_dir
from vdisk.errors import IntegrityError

from .files import write_atomic
from .stream import CHAIN_BYTES, DATA, ZERO, Header, payload_digest

DIR = "receiving"
STATE = "state.json"
OPS = "ops"
VERSION = 1
_OP = struct.Struct("<B7xQQ")
_SUM = CHAIN_BYTES


def _header_doc(h: Header) -> dict:
    doc = dict(h.__dict__)
    doc["snap_id"] = h.snap_id.hex()
    doc["base_id"] = h.base_id.hex()
    return doc


def _header_from(doc: dict) -> Header:
    doc = dict(doc)
    doc["snap_id"] = bytes.fromhex(doc["snap_id"])
    doc["base_id"] = bytes.fromhex(doc["base_id"])
    return Header(**doc)


class Staging:
    """The receive in progress in one disk directory."""

    def __init__(self, disk_path: str, header: Header, state: dict):
        self.dir = os.path.join(disk_path, DIR)
        self.header = header
        self.offset = state["offset"]
        self.ops_bytes = state["ops_bytes"]
        self.staged_bytes = state["staged_bytes"]
        self.phase = state["phase"]
        self.created_disk = state["created_disk"]
        self.apply_started_ns = state.get("apply_started_ns", 0)
        self.direct = state.get("direct", False)
        self._ops = None

    # ------------------------------------------------------------ opening

    @classmethod
    def load(cls, disk_path: str) -> "Staging | None":
        file = os.path.join(disk_path, DIR, STATE)
        try:
            with open(file, "rb") as f:
                doc = json.loads(f.read())
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')}")
            return cls(disk_path, _header_from(doc["header"]), doc)
        except FileNotFoundError:
            if os.path.isdir(os.path.join(disk_path, DIR)):
                # Created, and the first state not yet written: nothing was staged.
                shutil.rmtree(os.path.join(disk_path, DIR))
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"{file} is damaged ({e}): drop the receive in progress with "
                                 f"vdisk receive {disk_path} --abort") from None

    @classmethod
    def create(cls, disk_path: str, header: Header, created_disk: bool, direct: bool = False) -> "Staging":
        d = os.path.join(disk_path, DIR)
        os.mkdir(d, 0o700)
        fd = os.open(os.path.join(d, OPS), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        s = cls(disk_path, header, {"offset": header.resume_offset, "ops_bytes": 0, "staged_bytes": 0,
                                    "phase": "receiving", "created_disk": created_disk, "direct": direct})
        s.save()
        return s

    def state(self) -> dict:
        return {"version": VERSION, "header": _header_doc(self.header), "offset": self.offset,
                "ops_bytes": self.ops_bytes, "staged_bytes": self.staged_bytes, "phase": self.phase,
                "created_disk": self.created_disk, "apply_started_ns": self.apply_started_ns,
                "direct": self.direct}

    def save(self):
        write_atomic(os.path.join(self.dir, STATE), json.dumps(self.state(), indent=1).encode())

    # ------------------------------------------------------------ receiving

    def advance(self, offset: int, length: int):
        """Note an op written straight to the disk (``direct``): it is durable at the next checkpoint."""
        self.offset = offset + length
        self.staged_bytes += length

    def append(self, rtype: int, offset: int, length: int, data, digest: bytes | None = None):
        """Stage one op; ``digest`` is its payload's blake3 (computed here if None)."""
        if self._ops is None:
            f = open(os.path.join(self.dir, OPS), "r+b")
            f.truncate(self.ops_bytes)      # anything past the checkpoint was never confirmed
            f.seek(self.ops_bytes)
            self._ops = f
        head = _OP.pack(rtype, offset, length)
        self._ops.write(head)
        self._ops.write(digest or payload_digest(rtype, offset, length, data))
        if rtype == DATA:
            self._ops.write(data)
        self.offset = offset + length
        self.staged_bytes += length

    def checkpoint(self, phase: str | None = None, apply_started_ns: int | None = None):
        """Make everything appended so far durable, then say so in the state."""
        if self._ops is not None:
            self._ops.flush()
            os.fsync(self._ops.fileno())
            self.ops_bytes = self._ops.tell()
        if phase is not None:
            self.phase = phase
        if apply_started_ns is not None:
            self.apply_started_ns = apply_started_ns
        self.save()

    def close(self):
        if self._ops is not None:
            self._ops.close()
            self._ops = None

    def restore(self, state: dict):
        """Go back to an earlier checkpoint's ``state`` (what :meth:`state` returned then)."""
        self.close()
        self.offset, self.ops_bytes = state["offset"], state["ops_bytes"]
        self.staged_bytes, self.phase = state["staged_bytes"], state["phase"]
        with open(os.path.join(self.dir, OPS), "r+b") as f:
            f.truncate(self.ops_bytes)
            os.fsync(f.fileno())
        self.save()

    def remove(self):
        self.close()
        parent = os.path.dirname(self.dir)
        shutil.rmtree(self.dir)
        fsync_dir(parent)

    # ------------------------------------------------------------ applying

    def ops(self):
        """Every staged op up to the checkpoint: ``(type, offset, length, data)``, each checked."""
        file = os.path.join(self.dir, OPS)
        with open(file, "rb") as f:
            pos = 0
            while pos < self.ops_bytes:
                head = f.read(_OP.size + _SUM)
                if len(head) != _OP.size + _SUM:
                    break
                rtype, offset, length = _OP.unpack_from(head)
                data = f.read(length) if rtype == DATA else b""
                if rtype not in (DATA, ZERO) or len(data) != (length if rtype == DATA else 0) \
                        or payload_digest(rtype, offset, length, data) != head[_OP.size:]:
                    break
                pos += len(head) + len(data)
                yield rtype, offset, length, data
            if pos != self.ops_bytes:
                raise IntegrityError(f"{file} is damaged at byte {pos}: drop the receive with "
                                     f"vdisk receive {os.path.dirname(self.dir)} --abort and send the stream again")
