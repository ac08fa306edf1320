"""Receiving a stream: a snapshot recreated on this disk, all or nothing, resumable.

The order of work, and why a bad stream leaves the disk as it was:

1. **Checks before reading**: the disk is opened for writing (so no other
   writer, and no second receive, can run beside this one); a receive
   already in progress needs ``resume``.
2. **BEGIN**: the stream's snapshot must not exist here; an incremental
   stream's base must exist here *and* be the same snapshot (its id,
   :mod:`vdisk.replicate.identity`, not just its name), and the running
   point must not have changed since that base (the stream would drop
   those changes); a full stream goes to a new disk (created now, with
   the stream's block size and size) or to one whose running point holds
   nothing.
3. **Staging**: each record, once its blake3 chain, index and offset
   checked out, is appended to ``DISK/receiving/ops``
   (:mod:`vdisk.replicate.staging`); a checkpoint (ops synced, then the
   state written atomically) every 64 MiB or second. The disk's trees are
   not touched, so nothing of the stream is visible yet. (A full stream
   into a disk this receive created is written straight onto it instead:
   a disk with no snapshot that did not exist before hides nothing, and
   that saves writing the data twice; a checkpoint then flushes the disk.)
4. **END**: its totals must match what came; only then does the state say
   "applying" - the point of no return.
5. **Apply**: the running point is reset to the base (revert; for a full
   stream, every block unmapped), grown to the stream's size if needed,
   the staged ops written and zeroed onto it, flushed, and the snapshot
   taken: it appears in one commit, whole. Its source id is recorded
   (``DISK/received.json``) and the staging removed.

A stream that fails a check (a flipped byte, a record out of place, an END
that does not add up) is **rejected**: what this call staged is dropped
(a resumed receive goes back to where it was when the call began), a disk
the receive created is removed, and the disk is exactly as before. A stream
that merely **ends early** (a cut pipe, a killed sender) keeps everything
that checked out, up to a checkpoint, and so does a receive killed
outright: ``resume`` continues it, from a stream that starts at or before
the offset :func:`resume_token` reports (``vdisk send --resume TOKEN``
writes exactly that), incremental or full alike. A crash during apply is
finished by the next ``resume`` (apply starts over from the base: it is
idempotent). :func:`abort` drops a receive in progress.

While a receive is in progress, the disk's running point belongs to it:
apply resets it to the base.

**A rados disk** (``rados:POOL/NAME``) works the same, with its state in
the disk's own records (:mod:`vdisk.replicate.staging`,
:mod:`vdisk.replicate.identity`): the position and phase commit with the
disk, so they are right on any host and after any crash. Only the staged
ops are a file of the receiving host; resumed on a host that does not have
them, the receive is refused from where it stood and can only start over
there from byte 0 (a stream from the start), never apply what it lacks. A
full stream into a disk the receive creates has no ops (it is written
straight onto the disk, its position committed with the data) and resumes
anywhere. vdisk cannot remove a rados disk yet, so one that a refused
stream created is left empty instead.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from vdisk.errors import AlreadyExists, Busy, InvalidArgument, NotFound, quote
from vdisk.location import is_rados
from vdisk.names import validate_snapshot_name
from vdisk.snapshots.diff import diff

from . import identity
from .files import in_pool, label
from .staging import Staging, place_of, place_of_path
from .stream import DATA, END, Header, StreamDamaged, StreamReader, StreamTruncated, encode_token

CHECKPOINT_BYTES = 64 << 20
CHECKPOINT_SECONDS = 1.0


@dataclass
class ReceiveSummary:
    name: str
    base: str | None
    disk: str
    size: int
    resumed_from: int           # the byte this call took over from (0: a fresh receive)
    data_bytes: int             # DATA bytes this call read from the stream
    zero_bytes: int             # bytes ZERO records of this call covered
    records: int
    stream_bytes: int
    applied_bytes: int          # what the apply wrote and zeroed (the whole stream, staged parts included)
    created_disk: bool
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _open(path, break_lock: bool = False):
    from vdisk import Disk
    return Disk.open(path, break_lock=break_lock)


def _open_existing(path, break_lock: bool):
    """The disk at ``path`` open for writing, or None when there is none
    (then the NotFound that said so, for a rados disk)."""
    if not is_rados(path):
        return (_open(path), None) if os.path.lexists(path) else (None, None)
    try:
        return _open(path, break_lock), None
    except NotFound as e:
        return None, e


def receive(path, inp, resume: bool = False, progress=None, break_lock: bool = False) -> ReceiveSummary:
    """Receive the stream read from binary file ``inp`` into the disk at ``path`` (see the module docstring).

    ``path``: a local disk's path, or ``rados:POOL/NAME`` (a string, or a
    vdisk.location.RadosLocation naming the cluster); a missing disk is
    created there. ``progress(phase, done, total)``: phases "receive" and
    "apply", in bytes. ``break_lock``: a rados disk's writer that died (a
    receiver killed) is fenced and its lock taken over (vdisk.Disk.open).
    """
    t0 = time.monotonic()
    path = path if is_rados(path) else os.fspath(path)
    name = str(path)
    staging = saved = None
    created = restart = False
    disk, missing = _open_existing(path, break_lock)
    try:
        if disk is not None:
            staging = Staging.load(place_of(disk))
            if staging is not None and not resume:
                h = staging.header
                raise Busy(f"{name} is in the middle of receiving snapshot {quote(h.name)} "
                           f"({staging.offset} of {h.size} bytes in{_staged_at(staging)}): continue it with "
                           f"--resume (vdisk receive {name} --resume-token names where to send from) or drop it "
                           f"with vdisk receive {name} --abort")
            if staging is not None and staging.phase == "applying" and (staging.here or _published(disk, staging)):
                # The whole stream is staged already (or applied): the input is not needed.
                applied = _apply(disk, staging, progress)
                return _summary(staging, disk.location, 0, None, applied, t0)
            saved = staging.state() if staging is not None else None
        reader = StreamReader(inp)
        h = reader.next().header
        started_at = h.resume_offset
        if staging is not None:
            if not staging.header.same_stream(h):
                s = staging.header
                raise InvalidArgument(f"{name} is receiving snapshot {quote(s.name)}{_from(s)}, and this stream "
                                      f"is of {quote(h.name)}{_from(h)}: send that one, or drop the receive "
                                      f"with --abort")
            if not staging.here:
                if h.resume_offset:
                    raise InvalidArgument(_not_here(staging, name, f"the stream starts at byte {h.resume_offset}"))
                restart = True      # its ops are on another host: start over here, from byte 0
            elif h.resume_offset > staging.offset:
                raise InvalidArgument(f"the stream starts at byte {h.resume_offset}, but {name} holds the changes "
                                      f"up to byte {staging.offset} only: send with --resume "
                                      f"{encode_token(h.snap_id, h.base_id, staging.offset)}")
            started_at = 0 if restart else staging.offset
        elif h.resume_offset:
            raise InvalidArgument(f"this stream continues an interrupted receive from byte {h.resume_offset}, "
                                  f"but {name} has no receive in progress: send the whole stream")
        if disk is None:
            if h.incremental:
                gone = f"{missing}" if missing is not None else f"{name} does not exist"
                raise NotFound(f"{gone}; the stream is incremental (from {quote(h.base_name)}) "
                               f"and goes onto a disk that has that snapshot: receive a full stream first")
            _check_name(name, h)         # before a disk exists that a refusal would have to remove
            from vdisk import Disk
            disk = Disk.create(path, h.size, h.block_size)
            created = True
        try:
            _check_target(disk, h, staging)
        except BaseException:
            if created:
                disk = _drop_created(disk, None, name)
            raise
        if staging is None:
            staging = Staging.create(place_of(disk), h, created, direct=created and not h.incremental)
        elif restart:
            staging.restart_here()
        try:
            _stage(reader, staging, progress, disk)
        except StreamTruncated as e:
            _checkpoint(staging, disk)
            staging.close()
            raise StreamTruncated(f"{e}; nothing is published, and every change up to byte {staging.offset} is "
                                  f"kept: resume with vdisk receive {name} --resume, from the stream vdisk send "
                                  f"--resume {encode_token(h.snap_id, h.base_id, staging.offset)} writes "
                                  f"(or drop it: vdisk receive {name} --abort)") from None
        except StreamDamaged:
            if created:
                disk = _drop_created(disk, staging, name)
            else:
                _reject(staging, saved)
            raise
        except BaseException:
            # Interrupted (Ctrl-C), or the staging file system failed: keep
            # what a checkpoint can still make durable.
            try:
                _checkpoint(staging, disk)
            finally:
                staging.close()
            raise
        _checkpoint(staging, disk, "applying", time.time_ns())
        staging.close()
        applied = _apply(disk, staging, progress)
        return _summary(staging, disk.location, started_at, reader, applied, t0)
    finally:
        if disk is not None:
            disk.close()


def _staged_at(staging: Staging) -> str:
    return "" if staging.here else f", staged on {staging.elsewhere()}"


def _not_here(staging: Staging, name: str, what: str) -> str:
    """Why a receive whose ops are on another host cannot go on here from where it stands."""
    h = staging.header
    return (f"{what}, but the changes {name} staged up to byte {staging.offset} are on {staging.elsewhere()}, "
            f"not on this host: resume it there, or start it over here with the whole stream (vdisk send "
            f"--resume {encode_token(h.snap_id, h.base_id, 0)} | vdisk receive {name} --resume)")


def _drop_created(disk, staging: Staging | None, name: str):
    """A stream refused into a disk this receive created: the disk goes
    (a rados disk, which vdisk cannot remove yet, is left empty); returns
    the disk still to close, or None."""
    if not in_pool(disk):
        if staging is not None:
            staging.remove()
        disk.close()
        shutil.rmtree(name)
        return None
    # What a direct receive wrote goes first, then the state, in one commit.
    disk.zero(0, disk.size)
    if staging is not None:
        staging.remove()
    else:
        disk.flush()
    return disk


def _from(h: Header) -> str:
    return f" from {quote(h.base_name)}" if h.incremental else " (full)"


def _reject(staging: Staging, saved: dict | None):
    """Drop what this call staged: back to the receive as it was, or to none."""
    if saved is None:
        staging.remove()
    else:
        staging.restore(saved)


def _check_name(name: str, h: Header):
    try:
        validate_snapshot_name(h.name)
    except InvalidArgument as e:
        raise InvalidArgument(f"the stream's snapshot cannot be taken on {name}: {e}") from None


def _check_target(disk, h: Header, staging: Staging | None):
    path = label(disk)
    _check_name(path, h)
    if h.name in {r.name for r in disk.snapshot_records()}:
        raise AlreadyExists(f"{path} already has a snapshot {quote(h.name)}: delete or rename it to receive this one")
    if h.incremental:
        try:
            base = disk.snapshot_record(h.base_name)
        except NotFound:
            raise NotFound(f"{path} has no snapshot {quote(h.base_name)}, the base of this incremental stream: "
                           f"receive that snapshot first (or send a full stream)") from None
        if identity.snapshot_id(disk, h.base_name) != h.base_id:
            raise InvalidArgument(f"snapshot {quote(h.base_name)} of {path} is not the stream's base: it is "
                                  f"another snapshot of that name (taken or received separately); send a "
                                  f"full stream, or an incremental from a snapshot both disks share")
        if base.size > h.size:
            raise InvalidArgument(f"snapshot {quote(h.base_name)} of {path} is larger than the stream's snapshot")
        if staging is None:
            changed = diff(disk, h.base_name, None)
            if changed.changes or disk.size != base.size:
                raise InvalidArgument(f"the running point of {path} has changed since snapshot "
                                      f"{quote(h.base_name)} ({changed.data_bytes + changed.hole_bytes} bytes "
                                      f"differ); receiving would drop that: revert first "
                                      f"(vdisk snapshot revert {path} {h.base_name})")
    elif staging is None:
        if disk.allocated_bytes():
            raise InvalidArgument(f"{path} holds data; a full stream goes to a new disk or an empty one")
        if disk.size > h.size:
            raise InvalidArgument(f"{path} is larger ({disk.size} bytes) than the stream's snapshot "
                                  f"({h.size} bytes); a full stream goes to a new disk or an empty one")


def _checkpoint(staging: Staging, disk, phase=None, apply_started_ns=None):
    if staging.direct and not staging.in_pool:
        disk.flush()            # what the state will say is there must be durable first
    # (A rados disk's state is a record of the disk: it commits with the data.)
    staging.checkpoint(phase, apply_started_ns)


def _stage(reader: StreamReader, staging: Staging, progress, disk):
    h = reader.header
    total = h.covered_bytes
    done = 0
    since = 0
    last = time.monotonic()
    if progress:
        progress("receive", 0, total)
    while True:
        rec = reader.next()
        if rec.type == END:
            break
        done += rec.length
        offset, length, data = rec.offset, rec.length, rec.data
        end = offset + length
        if end > staging.offset:
            digest = rec.digest
            if offset < staging.offset:     # a resumed receive: keep only the part not staged yet
                cut = staging.offset - offset
                offset, length = offset + cut, length - cut
                data = data[cut:] if rec.type == DATA else b""
                digest = None
            if not staging.direct:
                staging.append(rec.type, offset, length, data, digest)
            elif rec.type == DATA:
                disk.write(offset, data)
                staging.advance(offset, length)
            else:
                disk.zero(offset, length)
                staging.advance(offset, length)
            since += length if rec.type == DATA else 0
        if progress:
            progress("receive", done, total)
        now = time.monotonic()
        if since >= CHECKPOINT_BYTES or now - last >= CHECKPOINT_SECONDS:
            _checkpoint(staging, disk)
            since, last = 0, now


def _apply(disk, staging: Staging, progress) -> int:
    """Write the staged stream onto the running point and take the snapshot; the bytes applied."""
    h = staging.header
    if _published(disk, staging):
        # A crash came after the snapshot was taken: only the bookkeeping is left.
        identity.remember(disk, h.name, h.snap_id, h.name, h.created_ns)
        staging.remove()
        return staging.staged_bytes
    _check_target(disk, h, staging)
    if staging.in_pool:
        # Stamped again by this host, whose clock will stamp the snapshot:
        # the check above must compare two times of one clock.
        staging.checkpoint(apply_started_ns=time.time_ns())
    if staging.direct:
        # Written straight onto the new disk while it was received.
        disk.flush()
        disk.create_snapshot(h.name)
        identity.remember(disk, h.name, h.snap_id, h.name, h.created_ns)
        staging.remove()
        return staging.staged_bytes
    if h.incremental:
        disk.revert(h.base_name)
    else:
        disk.zero(0, disk.size)
    if disk.size < h.size:
        disk.resize(h.size)
    total = staging.staged_bytes
    applied = 0
    if progress:
        progress("apply", 0, total)
    for rtype, offset, length, data in staging.ops():
        if rtype == DATA:
            disk.write(offset, data)
        else:
            disk.zero(offset, length)
        applied += length
        if progress:
            progress("apply", applied, total)
    disk.flush()
    disk.create_snapshot(h.name)
    identity.remember(disk, h.name, h.snap_id, h.name, h.created_ns)
    staging.remove()
    return applied


def _published(disk, staging: Staging) -> bool:
    """Whether the apply of ``staging`` took its snapshot already."""
    done = {r.name: r for r in disk.snapshot_records()}.get(staging.header.name)
    return staging.phase == "applying" and done is not None and done.created_ns >= staging.apply_started_ns


def _summary(staging: Staging, where: str, started_at: int, reader: StreamReader | None, applied: int,
             t0: float) -> ReceiveSummary:
    h = staging.header
    return ReceiveSummary(h.name, h.base_name, where, h.size, started_at,
                          reader.data_bytes if reader else 0, reader.zero_bytes if reader else 0,
                          reader.records if reader else 0, reader.bytes_read if reader else 0, applied,
                          staging.created_disk, time.monotonic() - t0)


def resume_token(path) -> dict:
    """Where the receive in progress in the disk at ``path`` stands, and its token for ``vdisk send --resume``."""
    if is_rados(path):
        from vdisk import Disk
        with Disk.open(path, readonly=True) as disk:
            staging = Staging.load(place_of(disk), writer=False)
            if staging is not None and not staging.here:
                raise NotFound(_not_here(staging, str(path), f"{path} is receiving snapshot "
                                                             f"{quote(staging.header.name)}"))
    else:
        from vdisk.container import require_container
        require_container(path)
        staging = Staging.load(place_of_path(path))
    if staging is None:
        raise NotFound(f"{path} has no receive in progress")
    h = staging.header
    return {"token": encode_token(h.snap_id, h.base_id, staging.offset), "name": h.name, "base": h.base_name,
            "offset": staging.offset, "size": h.size, "staged_bytes": staging.staged_bytes, "phase": staging.phase}


def abort(path, break_lock: bool = False) -> dict:
    """Drop the receive in progress in the disk at ``path``: the disk goes back to how it was before it.

    A local disk the receive created (and that holds no snapshot) is
    removed; a rados one is left empty (vdisk does not remove rados disks).
    """
    with _open(path, break_lock) as disk:
        staging = Staging.load(place_of(disk))
        if staging is None:
            raise NotFound(f"{path} has no receive in progress")
        h = staging.header
        # A rados disk created by the receive stays: what a direct receive wrote goes.
        undo_direct = staging.in_pool and staging.direct
        if staging.phase == "applying" or undo_direct:
            # Apply may have begun: the running point goes back to where it started.
            if h.incremental and h.base_name in {r.name for r in disk.snapshot_records()}:
                disk.revert(h.base_name)
            elif not h.incremental:
                disk.zero(0, disk.size)
        staging.remove()
        remove_disk = staging.created_disk and not disk.snapshot_records() and not staging.in_pool
    if remove_disk:
        shutil.rmtree(path)
    return {"name": h.name, "base": h.base_name, "dropped_bytes": staging.staged_bytes, "removed_disk": remove_disk}
