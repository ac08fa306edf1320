"""Where a receive keeps what it has read until the whole stream checked out.

Two things: the **ops** (the stream's DATA and ZERO records as they passed
their checks, appended in order) and the **state** (where the receive
stands). The disk's trees are not touched until the stream's END record
has been read and every check passed.

Each op::

      off   size  field
      0     1     type: 2 DATA, 3 ZERO (as in the stream)
      1     7     reserved, zero
      8     8     offset (bytes)
      16    8     length (bytes)
      24    32    blake3 of the stream record's payload (as its chain took
                  it: DATA offset and data, ZERO offset and length)
      56    n     DATA: the data (n = length); ZERO: nothing

The state, written at each checkpoint after the ops are synced: the
stream's header, ``offset`` (every change before this byte is staged),
``ops_bytes`` (the length of the ops that holds them; a longer file is cut
back to it), ``staged_bytes`` (what those ops cover), ``phase``
("receiving", then "applying" once the whole stream checked out), whether
the receive created the disk, and ``direct``: a full stream into a disk
the receive created writes straight onto that disk's running point
instead of the ops (nothing else can see a disk that has no snapshot and
did not exist before), and a checkpoint flushes the disk.

Where they live:

=============  ================================  ==============================================
               local disk ``DISK``               ``rados:POOL/NAME``
=============  ================================  ==============================================
state          ``DISK/receiving/state.json``     the disk's record ``receive``, committed with
               (written atomically)              the disk: every host sees it, and a direct
                                                 receive's data and position commit together
ops            ``DISK/receiving/ops``            ``receiving/ops.ID`` in the local state
                                                 directory of the host that receives (bulky:
                                                 it is not copied into the pool); the state
                                                 names it (``spool``: ID, host, directory)
=============  ================================  ==============================================

On a rados disk the ops can therefore be missing where the receive is
resumed (another host, or this one after a reboot cleared its state
directory): :attr:`Staging.here` says whether they are on this host. A
receive whose ops are elsewhere is never applied here; it can only start
again from byte 0 (:meth:`Staging.restart_here`, with a stream from the
start) or be dropped. A direct receive has no ops: it resumes on any host.

A crash leaves the last checkpoint; a resumed receive continues from its
``offset`` (the resume token names it). See :mod:`vdisk.replicate.receive`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import uuid

from vdisk.container import fsync_dir
from vdisk.errors import IntegrityError

from .files import in_pool, put_record, write_atomic
from .stream import CHAIN_BYTES, DATA, ZERO, Header, payload_digest

DIR = "receiving"
STATE = "state.json"
OPS = "ops"
RECORD = "receive"          # a rados disk's record of the state
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


class _Files:
    """A local disk: state and ops in ``DISK/receiving/``."""

    in_pool = False

    def __init__(self, disk_path: str):
        self.root = disk_path
        self.label = disk_path
        self.dir = os.path.join(disk_path, DIR)
        self.where = os.path.join(self.dir, STATE)

    def read_state(self) -> bytes | None:
        try:
            with open(self.where, "rb") as f:
                return f.read()
        except FileNotFoundError:
            if os.path.isdir(self.dir):
                # Created, and the first state not yet written: nothing was staged.
                shutil.rmtree(self.dir)
            return None

    def write_state(self, data: bytes | None):
        if data is not None:
            write_atomic(self.where, data)

    def ops_path(self, spool) -> str:
        return os.path.join(self.dir, OPS)

    def make_ops(self, spool):
        os.mkdir(self.dir, 0o700)
        fd = os.open(self.ops_path(spool), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def drop(self, spool):
        shutil.rmtree(self.dir)
        fsync_dir(self.root)


class _Pool:
    """A rados disk: the state a record of the disk, the ops in this host's state directory."""

    in_pool = True

    def __init__(self, disk):
        self.disk = disk
        self.label = disk.location
        self.dir = os.path.join(disk.path, DIR)
        self.where = f"record {RECORD!r} of {disk.location}"

    def read_state(self) -> bytes | None:
        return self.disk.extra_record(RECORD)

    def write_state(self, data: bytes | None):
        # Committed with everything written to the disk before it (a direct
        # receive's data and its position, in one commit).
        put_record(self.disk, RECORD, data)

    def ops_path(self, spool) -> str:
        return os.path.join(self.dir, f"{OPS}.{spool['id']}")

    def make_ops(self, spool):
        if spool is None:
            return
        os.makedirs(self.dir, 0o700, exist_ok=True)
        fd = os.open(self.ops_path(spool), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        fsync_dir(self.dir)

    def drop(self, spool):
        if spool is not None:
            _unlink(self.ops_path(spool))
        self.tidy(None)

    def tidy(self, keep):
        """Remove ops files of this host that belong to no receive in
        progress (``keep``: the current spool): dropped or restarted
        elsewhere while this host was away. Only a writer calls this."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith(OPS + ".") and (keep is None or n != os.path.basename(self.ops_path(keep))):
                _unlink(os.path.join(self.dir, n))
        if keep is None:
            try:
                os.rmdir(self.dir)
            except OSError:
                pass


def _unlink(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def place_of(disk):
    """Where the receive state of the open ``disk`` lives (see the module docstring)."""
    return _Pool(disk) if in_pool(disk) else _Files(disk.path)


def place_of_path(disk_path: str):
    """A local disk's, without opening it."""
    return _Files(disk_path)


def _new_spool(place) -> dict:
    return {"id": uuid.uuid4().hex[:16], "host": socket.gethostname(), "dir": place.dir}


class Staging:
    """The receive in progress in one disk."""

    def __init__(self, place, header: Header, state: dict):
        self.place = place
        self.header = header
        self.offset = state["offset"]
        self.ops_bytes = state["ops_bytes"]
        self.staged_bytes = state["staged_bytes"]
        self.phase = state["phase"]
        self.created_disk = state["created_disk"]
        self.apply_started_ns = state.get("apply_started_ns", 0)
        self.direct = state.get("direct", False)
        self.spool = state.get("spool")     # a rados disk's ops: {id, host, dir}; None: none
        self._ops = None

    @property
    def in_pool(self) -> bool:
        return self.place.in_pool

    @property
    def here(self) -> bool:
        """Whether every staged op is on this host (always, but for a rados
        disk whose ops another host, or this one before a reboot, holds)."""
        if not self.in_pool or self.spool is None:
            return True
        try:
            return os.path.getsize(self.place.ops_path(self.spool)) >= self.ops_bytes
        except OSError:
            return False

    def elsewhere(self) -> str:
        """Where the ops of a receive not :attr:`here` are, for messages."""
        s = self.spool or {}
        return f"host {s.get('host')} (in {s.get('dir')})"

    # ------------------------------------------------------------ opening

    @classmethod
    def load(cls, place, writer: bool = True) -> "Staging | None":
        """The receive in progress at ``place``, or None. A ``writer`` (which
        holds the disk's lock) also removes a rados disk's stale ops here."""
        try:
            raw = place.read_state()
            if raw is None:
                if writer and place.in_pool:
                    place.tidy(None)
                return None
            doc = json.loads(raw)
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')}")
            s = cls(place, _header_from(doc["header"]), doc)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"{place.where} is damaged ({e}): drop the receive in progress with "
                                 f"vdisk receive {place.label} --abort") from None
        if writer and place.in_pool:
            place.tidy(s.spool)
        return s

    @classmethod
    def create(cls, place, header: Header, created_disk: bool, direct: bool = False) -> "Staging":
        spool = _new_spool(place) if place.in_pool and not direct else None
        place.make_ops(spool)
        state = {"offset": header.resume_offset, "ops_bytes": 0, "staged_bytes": 0, "phase": "receiving",
                 "created_disk": created_disk, "direct": direct}
        if spool is not None:
            state["spool"] = spool
        s = cls(place, header, state)
        s.save()
        return s

    def state(self) -> dict:
        doc = {"version": VERSION, "header": _header_doc(self.header), "offset": self.offset,
               "ops_bytes": self.ops_bytes, "staged_bytes": self.staged_bytes, "phase": self.phase,
               "created_disk": self.created_disk, "apply_started_ns": self.apply_started_ns,
               "direct": self.direct}
        if self.spool is not None:
            doc["spool"] = dict(self.spool)
        return doc

    def save(self):
        self.place.write_state(json.dumps(self.state(), indent=1).encode())

    def restart_here(self):
        """Start the receive over on this host, from byte 0 (its ops are
        elsewhere: see :attr:`here`); the stream must start at byte 0."""
        self.close()
        self.spool = _new_spool(self.place)
        self.place.make_ops(self.spool)
        self.offset = self.ops_bytes = self.staged_bytes = 0
        self.phase = "receiving"
        self.save()

    # ------------------------------------------------------------ receiving

    def advance(self, offset: int, length: int):
        """Note an op written straight to the disk (``direct``): it is durable at the next checkpoint."""
        self.offset = offset + length
        self.staged_bytes += length

    def append(self, rtype: int, offset: int, length: int, data, digest: bytes | None = None):
        """Stage one op; ``digest`` is its payload's blake3 (computed here if None)."""
        if self._ops is None:
            f = open(self.place.ops_path(self.spool), "r+b")
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
        old = state.get("spool")
        if self.spool is not None and self.spool != old:
            # Restarted here by this call: its ops go, the earlier ones (elsewhere) stay.
            _unlink(self.place.ops_path(self.spool))
        self.spool = dict(old) if old is not None else None
        self.offset, self.ops_bytes = state["offset"], state["ops_bytes"]
        self.staged_bytes, self.phase = state["staged_bytes"], state["phase"]
        if not self.direct and self.here:
            with open(self.place.ops_path(self.spool), "r+b") as f:
                f.truncate(self.ops_bytes)
                os.fsync(f.fileno())
        self.save()

    def remove(self):
        """Drop the receive's state and ops (on a rados disk, committing the
        disk with it)."""
        self.close()
        self.place.write_state(None)
        self.place.drop(self.spool)

    # ------------------------------------------------------------ applying

    def ops(self):
        """Every staged op up to the checkpoint: ``(type, offset, length, data)``, each checked."""
        file = self.place.ops_path(self.spool)
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
                                     f"vdisk receive {self.place.label} --abort and send the stream again")
