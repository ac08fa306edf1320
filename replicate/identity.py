"""Which snapshot is which, across disks: snapshot ids.

A stream names its snapshot and its base by id, so that an incremental
stream is applied only onto the very snapshot it was computed from, not
onto another one that happens to bear the name (deleted and taken again,
or on another disk altogether).

A snapshot's id is derived from what never changes about it: a blake3 of
the disk's creation time (``disk/config``), the snapshot's creation time
and its seq (``disk/snap/NAME``). A rename keeps it; a snapshot deleted
and taken again under the same name gets another.

A received snapshot is a new snapshot of the receiving disk (its own
creation time and seq), yet it must keep the id of the one it copies, so
that the next incremental from it is accepted, and a replica can send on
to a third disk. The receiving disk keeps that mapping, keyed by the local
snapshot's creation time and seq, so it follows renames and never applies
to a later snapshot of that name: a local disk in ``DISK/received.json``
(written atomically), a rados disk in its own record ``received``
(``Disk.extra_record``, committed with the disk, so every host that opens
the disk sees it; :mod:`vdisk.replicate.files`). The same document::

    {"version": 1,
     "snapshots": {"<created_ns>:<seq>": {"id": "<32 hex digits>", "name": "<name at the source>",
                                          "created_ns": <at the source>}}}

A crash between publishing a received snapshot and writing its entry is
finished by the next ``vdisk receive --resume`` (the receive in progress
records that it was applying); dropped instead (``--abort``), it leaves
the snapshot without its source id: an incremental onto it is then
refused (send a full stream again), never applied onto the wrong base.
"""

from __future__ import annotations

import json
import os
import struct

import blake3

from vdisk.errors import IntegrityError

from .files import in_pool, put_record, write_atomic
from .stream import ID_BYTES

FILE = "received.json"
RECORD = "received"         # a rados disk's record of the same document
VERSION = 1


def _key(rec) -> str:
    return f"{rec.created_ns}:{rec.seq}"


def local_id(disk, rec) -> bytes:
    """The id of snapshot record ``rec`` of ``disk`` as taken there."""
    raw = b"vdisk snapshot" + struct.pack("<QQQ", disk.config.created_ns, rec.created_ns, rec.seq)
    return blake3.blake3(raw).digest(ID_BYTES)


def _where(disk) -> str:
    return f"record {RECORD!r} of {disk.location}" if in_pool(disk) else os.path.join(disk.path, FILE)


def load(disk) -> dict:
    """The received snapshots of ``disk``: key -> entry (empty when it received none)."""
    where = _where(disk)
    try:
        if in_pool(disk):
            raw = disk.extra_record(RECORD)
            if raw is None:
                return {}
        else:
            with open(where, "rb") as f:
                raw = f.read()
        doc = json.loads(raw)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        way = "run vdisk verify" if in_pool(disk) else "move it away"
        raise IntegrityError(f"{where} is damaged ({e}): the ids of received snapshots are lost; "
                             f"{way} and send full streams again") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("snapshots"), dict):
        raise IntegrityError(f"{where} is not a vdisk list of received snapshots (or of another version)")
    return doc["snapshots"]


def snapshot_id(disk, name: str) -> bytes:
    """The id of snapshot ``name`` of ``disk``: the id it was received under, else its own."""
    rec = disk.snapshot_record(name)
    entry = load(disk).get(_key(rec))
    if entry is not None:
        try:
            raw = bytes.fromhex(entry["id"])
        except (KeyError, TypeError, ValueError):
            raw = b""
        if len(raw) != ID_BYTES:
            raise IntegrityError(f"{_where(disk)}: the entry of snapshot {name!r} is damaged")
        return raw
    return local_id(disk, rec)


def remember(disk, name: str, source_id: bytes, source_name: str, source_created_ns: int):
    """Record that snapshot ``name`` of ``disk`` is the copy of snapshot ``source_id``.

    Entries of snapshots the disk no longer has are dropped on the way.
    """
    live = {_key(r) for r in disk.snapshot_records()}
    entries = {k: v for k, v in load(disk).items() if k in live}
    entries[_key(disk.snapshot_record(name))] = {"id": source_id.hex(), "name": source_name,
                                                 "created_ns": source_created_ns}
    doc = json.dumps({"version": VERSION, "snapshots": entries}, indent=1, sort_keys=True).encode()
    if in_pool(disk):
        put_record(disk, RECORD, doc)
    else:
        write_atomic(os.path.join(disk.path, FILE), doc)
