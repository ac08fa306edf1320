"""The read path: views of committed state, block reads, checksum checks.

:class:`Reader` is the read API that the running point (:class:`vdisk.Disk`)
and snapshot views share; :class:`ReadPath` is the engine's side of it,
mixed into Disk: one view per request (for a read-only opener, one pinned
LMDB read transaction, so a request never mixes nodes of two commits), and
reads that map VBA -> PBA, fetch from the data store and refuse any block
whose checksum does not match.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import blake3

from vdisk.errors import ChecksumMismatch, IntegrityError, InvalidArgument, NotFound, ReadOnly, StorageError

from . import format as fmt
from .extents import LEN_BITS, MAX_LEN, ExtentMap
from .names import CSUM_BYTES, SNAP_META_PREFIX, SNAP_TREE_PREFIX

log = logging.getLogger("vdisk")

# Attempts of one read-only request whose view a writer's commit moved (_in_view).
VIEW_RETRIES = 8


@dataclass
class Extent:
    """One run of ``block_status``: byte offset, length, and what it holds."""

    offset: int
    length: int
    allocated: bool
    zero: bool


class Reader:
    """The read API shared by the running point and snapshot views."""

    disk: "ReadPath"
    size: int
    block_size: int

    def _lba_map(self) -> ExtentMap:
        raise NotImplementedError

    def _read_origin(self):
        """What serves the ranges this view does not map (None: they read as zeros)."""
        return None

    def _check_range(self, offset: int, length: int):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(f"I/O range {offset}+{length} is outside the disk (size {self.size})")

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; unmapped ranges read as zeros."""
        bs = self.block_size
        b0 = offset // bs
        b1 = -(-(offset + length) // bs)

        def read():
            # Checked in the view: a read-only opener's size may have grown.
            self._check_range(offset, length)
            return self.disk._read_blocks(self._lba_map(), b0, b1 - b0, self._read_origin()) if length else b""
        buf = self.disk._in_view(read)
        start = offset - b0 * bs
        if start == 0 and length == len(buf):
            return bytes(buf)
        return bytes(memoryview(buf)[start:start + length])

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Runs of allocated data and of holes (which read as zeros)."""
        d = self.disk
        bs = self.block_size
        out: list[Extent] = []

        def add(start, end, allocated):
            if start >= end:
                return
            if out and out[-1].allocated == allocated and out[-1].offset + out[-1].length == start:
                out[-1].length += end - start
            else:
                out.append(Extent(start, end - start, allocated, not allocated))

        end = offset + length
        with d.view():
            self._check_range(offset, length)
            b0 = offset // bs
            b1 = -(-end // bs)
            # Unmapped ranges an origin serves hold whatever it holds: data.
            gap = self._read_origin() is not None
            pos = offset
            for s, _vba, n in self._lba_map().pieces(b0, b1 - b0):
                a, b = max(s * bs, offset), min((s + n) * bs, end)
                add(pos, a, gap)
                add(a, b, True)
                pos = b
            add(pos, end, gap)
        return out

    def allocated_bytes(self) -> int:
        d = self.disk
        with d.view():
            return sum(n for _, _, n in self._lba_map().extents()) * self.block_size


class SnapshotView(Reader):
    """A read-only view of one snapshot, from :meth:`Disk.open_snapshot`."""

    readonly = True

    def __init__(self, disk: "ReadPath", name: str, record: fmt.SnapshotRecord):
        self.disk = disk
        self.name = name
        self.size = record.size
        self.block_size = disk.block_size
        self._tree_name = SNAP_TREE_PREFIX + name
        self._created_ns = record.created_ns

    def _lba_map(self) -> ExtentMap:
        # A view belongs to the snapshot it was opened on, not to its name: a
        # snapshot deleted and re-created under the same name is another one.
        d = self.disk
        buf = d.forest.meta_get(SNAP_META_PREFIX + self.name.encode())
        if buf is None or fmt.decode_snapshot(self.name, buf).created_ns != self._created_ns:
            raise NotFound(f"snapshot {self.name!r} no longer exists")
        return ExtentMap(d.forest.tree(self._tree_name))

    def write(self, offset, data):
        raise ReadOnly(f"snapshot {self.name!r} is read-only")

    trim = zero = write

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ReadPath:
    """The engine's reads and views, mixed into :class:`vdisk.disk.Disk`."""

    @contextlib.contextmanager
    def view(self):
        """The lock, and for a read-only opener one pinned committed view.

        A read-only opener shares nothing with the writer but the committed
        database and the redo log (vdisk/journal.py), which the writer changes
        under it (nodes rewritten in place, PBAs reused once their release is
        durable, punched once a logged trim is). Each request
        therefore reads every node in one LMDB read transaction, and reloads
        the trees when that view is newer than the last one. Yields a
        function that tells whether the writer has committed since.
        """
        with self._settled():
            self._check_open()
            if not self.readonly:
                yield _never
                return
            with self._pinned() as view:
                yield lambda: self.store.current_view() != view or self._log_moved()

    @contextlib.contextmanager
    def _pinned(self):
        """A pinned view whose tree records are loaded: yields its id.

        Reloading reads the records and the trees' roots inside the view;
        a commit landing meanwhile can make that fail (a RADOS node store
        refuses a node rewritten after the view), which is retried in the
        newer view like a request (:meth:`_in_view`).
        """
        for attempt in range(VIEW_RETRIES):
            with self.store.read_view() as view:
                try:
                    if view != self._view_id:
                        self._view_id = None
                        self._init_journal()
                        self._load()
                    # The writer's flushes since (vdisk/journal.py): they
                    # change no committed state.
                    self._follow_log()
                except IntegrityError:
                    self._view_id = None
                    if attempt + 1 == VIEW_RETRIES or self.store.current_view() == view:
                        raise
                    continue
                except BaseException:
                    self._view_id = None          # the maps may be half-changed: reload
                    raise
                self._view_id = view
                yield view
                return

    def _load_pinned(self):
        """The first load of a read-only opener, in a view (see :meth:`_pinned`)."""
        with self._pinned():
            pass

    def _in_view(self, fn):
        """``fn()`` in one view; a read-only opener retries when the view moved.

        The only way a read in a pinned view can fail on a healthy disk is
        that the writer reused a PBA the view still maps (freed and rewritten
        by a later commit): its checksum then fails. Retried in the newer
        view, the read finds the block where it lives now; a failure in an
        unchanged view is real and is raised.
        """
        if not self.readonly:
            # The writer's own maps never move under it: no view to pin, no
            # retry (this is every NBD and FUSE read of a served disk).
            with self._lock:
                self._check_open()
                return fn()
        for attempt in range(VIEW_RETRIES):
            with self.view() as moved:
                try:
                    return fn()
                except IntegrityError:
                    if attempt + 1 == VIEW_RETRIES or not moved():
                        raise

    def _read_blocks(self, lba_map: ExtentMap, b0: int, n: int, origin=None) -> bytes | bytearray:
        bs = self.block_size
        if n == 1:
            data = self._read_one(lba_map, b0)
            if data is not None:
                return data
        pieces = lba_map.pieces(b0, n)
        if self._recent and self._recent_in(pieces):
            # The general path reads the trees (vdisk/recent.py).
            with self.changing(logged=True):
                self.settle()
        if len(pieces) == 1 and pieces[0][0] == b0 and pieces[0][2] == n:
            # One extent (the common large read): read straight into a new
            # bytes object, no zero-filled buffer and no copy afterwards.
            vba = pieces[0][1]
            phys = self._vba.pieces(vba, n)
            if len(phys) == 1 and phys[0][0] == vba and phys[0][2] == n:
                data = self._pread(n * bs, phys[0][1] * bs)
                if len(data) == n * bs:
                    self._verify_sums(vba, n, memoryview(data), b0)
                    return data
        out = bytearray(n * bs)
        view = memoryview(out)
        pos = b0
        for s, vba, ln in pieces:
            if origin is not None and s > pos:
                view[(pos - b0) * bs:(s - b0) * bs] = origin.read(pos * bs, (s - pos) * bs)
            self._read_vba(vba, ln, view[(s - b0) * bs:(s - b0 + ln) * bs], s)
            pos = s + ln
        if origin is not None and pos < b0 + n:
            view[(pos - b0) * bs:] = origin.read(pos * bs, (b0 + n - pos) * bs)
        return out

    def _read_one(self, lba_map: ExtentMap, lba: int) -> bytes | None:
        """One mapped, intact block read with a floor lookup per map; None otherwise.

        The common NBD request is one 4 KiB block (issue 13): a floor in the
        LBA and VBA trees, a get in the csum tree and one pread, instead of
        the general path's piece lists. Anything else (a hole, a missing
        VBA or checksum, a short read, a mismatch) returns None and the
        general path reads the block again and answers it as it always has,
        so every error keeps its message.
        """
        e = lba_map.tree.floor(lba)
        if e is None:
            return None
        k, v = e
        if k + (v & MAX_LEN) <= lba:
            return None
        vba = (v >> LEN_BITS) + lba - k
        recent = self._recent.get(vba)
        if recent is not None:
            # Written since the last commit: the trees do not have it yet.
            data = self._pread(self.block_size, recent[0] * self.block_size)
            if len(data) != self.block_size or blake3.blake3(data).digest(CSUM_BYTES) != recent[1]:
                return None
            return data
        e = self._vba.tree.floor(vba)
        if e is None:
            return None
        k, v = e
        if k + (v & MAX_LEN) <= vba:
            return None
        bs = self.block_size
        data = self._pread(bs, ((v >> LEN_BITS) + vba - k) * bs)
        want = self._csum.get(vba)
        if want is None or len(data) != bs or blake3.blake3(data).digest(CSUM_BYTES) != want:
            return None
        return data

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            return self._data.read(length, offset)
        except OSError as e:
            raise self._read_error(e, offset // self.block_size) from None

    def _read_error(self, e: OSError, pba: int) -> StorageError:
        # A failed read loses nothing acknowledged: the disk goes on, the
        # request fails with the device's error.
        return StorageError(f"reading {self.path}/data at PBA {pba} failed: {e.strerror or e}")

    def _read_vba(self, vba: int, count: int, out: memoryview, lba: int):
        bs = self.block_size
        pos = vba
        for v, pba, n in self._vba.pieces(vba, count):
            if v != pos:
                raise IntegrityError(f"LBA {lba + pos - vba}: VBA {pos} has no physical block: run vdisk verify")
            dst = out[(v - vba) * bs:(v - vba + n) * bs]
            try:
                got = self._data.readinto(dst, pba * bs)
            except OSError as e:
                raise self._read_error(e, pba) from None
            if got != n * bs:
                raise IntegrityError(f"LBA {lba + v - vba}: data file is shorter than PBA {pba + got // bs}")
            pos = v + n
        if pos != vba + count:
            raise IntegrityError(f"LBA {lba + pos - vba}: VBA {pos} has no physical block: run vdisk verify")
        self._verify_sums(vba, count, out, lba)

    def _verify_sums(self, vba: int, count: int, data: memoryview, lba: int):
        """Fail unless each block of ``data`` (VBAs vba.., LBAs lba..) matches its checksum."""
        bs = self.block_size
        out = data
        want = list(self._csum.items(vba, vba + count))
        if len(want) != count or want[0][0] != vba or want[-1][0] != vba + count - 1:
            have = {v for v, _ in want}
            i = next(i for i in range(count) if vba + i not in have)
            raise IntegrityError(f"LBA {lba + i}: checksum of VBA {vba + i} is missing: run vdisk verify")
        h = blake3.blake3
        got = [h(out[i:i + bs]).digest(CSUM_BYTES) for i in range(0, count * bs, bs)]
        if got != [w for _, w in want]:
            i = next(i for i in range(count) if got[i] != want[i][1])
            log.error("checksum mismatch at LBA %d (VBA %d) of %s", lba + i, vba + i, self.path)
            raise ChecksumMismatch(f"data at LBA {lba + i} (byte {(lba + i) * bs}) does not match its "
                                   f"checksum: refusing to return wrong data; run vdisk verify --data")


def _never() -> bool:
    return False
