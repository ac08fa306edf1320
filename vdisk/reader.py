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
        return self._read(offset, length, None)

    def readinto(self, offset: int, buf) -> None:
        """Fill ``buf`` (writable) with the ``len(buf)`` bytes at ``offset``.

        NBD's pread: the blocks of an aligned request are read straight into
        nbdkit's buffer and checked there, with no bytes objects joined or
        copied (issue 13's profile of 1 MiB reads: the join and the copy
        were a third of a request).
        """
        self._read(offset, len(buf), memoryview(buf).cast("B"))

    def _read(self, offset: int, length: int, dest: memoryview | None) -> bytes | None:
        """:meth:`read` (``dest`` None) or :meth:`readinto`."""
        bs = self.block_size
        b0 = offset // bs
        b1 = -(-(offset + length) // bs)
        head = offset - b0 * bs
        # An aligned request is read into dest itself, any other into blocks of its own.
        direct = dest is not None and not head and not length % bs
        if length == bs and not head:
            into = dest if direct else memoryview(bytearray(bs))
            if self.disk._read_one(self, b0, into):
                return None if direct else bytes(into)
        span: list[memoryview] = []

        def issue(fast=True):
            # Checked in the view: a read-only opener's size may have grown.
            self._check_range(offset, length)
            if not length:
                return _nothing
            if direct:
                into = dest
            else:
                if not span:
                    span.append(memoryview(bytearray((b1 - b0) * bs)))
                into = span[0]
            return self.disk._start_read(self._lba_map(), b0, b1 - b0, into, self._read_origin(), fast)
        self.disk._fetch(issue)
        if direct:
            return None
        got = span[0][head:head + length] if span else memoryview(b"")
        if dest is None:
            return bytes(got)
        dest[:] = got
        return None

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

    def _fetch(self, issue):
        """One read request: ``issue(fast)`` looks it up and issues its reads, then it is finished.

        ``issue`` returns ``finish``, which waits for the data store and
        checks the checksums (:meth:`_start_read`); None from it means the
        one-block path declined and ``issue(False)`` answers. The writer
        runs ``finish`` outside its lock, so other requests go on while the
        store waits (a RADOS cluster): safe because ``finish`` only compares
        what was looked up under the lock with what the store returns, and
        the store returns what the PBAs held when the reads were issued (the
        rule of vdisk/datastore.py, "Reads in flight"): a PBA a later commit
        frees and a later write reuses is rewritten only after these reads
        are done. A read-only opener does it all in one pinned view, which
        its retry needs.
        """
        if self.readonly:
            def whole():
                data = issue()()
                return issue(False)() if data is None else data
            return self._in_view(whole)
        with self._lock:
            self._check_open()
            finish = issue()
        data = finish()
        if data is None:
            with self._lock:
                self._check_open()
                finish = issue(False)
            data = finish()
        return data

    def _read_one(self, view: Reader, lba: int, into: memoryview) -> bool:
        """Block ``lba`` of ``view`` into ``into`` for the writer, if the one-block path has it.

        The common NBD request (issue 13) without the general path's
        closures: the look-up of :meth:`_start_read_one` under the lock, the
        wait and check outside it, as :meth:`_fetch` does. False (a hole, a
        read-only opener, anything the one-block path declines) sends the
        caller down the general path, which answers it as it always has.
        """
        if self.readonly:
            return False
        with self._lock:
            self._check_open()
            view._check_range(lba * self.block_size, self.block_size)
            finish = self._start_read_one(view._lba_map(), lba, into)
        return finish is not None and finish() is not None

    def _read_blocks(self, lba_map: ExtentMap, b0: int, n: int, into: memoryview, origin=None) -> None:
        """Blocks ``[b0, b0 + n)`` of ``lba_map`` into ``into``, verified, all under the caller's lock."""
        if self._start_read(lba_map, b0, n, into, origin)() is None:
            self._start_read(lba_map, b0, n, into, origin, False)()

    def _start_read(self, lba_map: ExtentMap, b0: int, n: int, into: memoryview, origin=None,
                    fast: bool = True):
        """Look up blocks ``[b0, b0 + n)`` and issue their reads into ``into`` at once; returns ``finish``.

        Every extent's PBAs go to the data store in one
        :meth:`read_many_into` (RADOS: all in flight together), each into
        its place in ``into`` (``n`` blocks long); holes are filled here,
        and the checksums the blocks must match are looked up here too.
        ``finish()`` waits, checks, and returns ``into`` (None only from the
        one-block path, when ``fast``).
        """
        bs = self.block_size
        if n == 1 and fast:
            finish = self._start_read_one(lba_map, b0, into)
            if finish is not None:
                return finish
        if self._lba_recent_in(lba_map, b0, n):
            # The general path reads the trees (vdisk/recent.py).
            with self.changing(logged=True):
                self.settle()
        pieces = lba_map.pieces(b0, n)
        if self._recent and self._recent_in(pieces):
            # The general path reads the trees (vdisk/recent.py).
            with self.changing(logged=True):
                self.settle()
        ranges: list[tuple[int, int]] = []                # (length, offset) for the data store
        views: list[memoryview] = []                      # where each range lands in ``into``
        lbas: list[int] = []                              # the LBA each range starts at
        checks = []                                       # (VBA, blocks, LBA, checksums): one an extent
        pos = b0
        for s, vba, ln in pieces:
            if s > pos:
                _fill(into, (pos - b0) * bs, (s - pos) * bs, origin, pos * bs)
            at = vba
            for v, pba, k in self._vba.pieces(vba, ln):
                if v != at:
                    break
                lba = s + v - vba
                ranges.append((k * bs, pba * bs))
                views.append(into[(lba - b0) * bs:(lba - b0 + k) * bs])
                lbas.append(lba)
                at = v + k
            if at != vba + ln:
                raise IntegrityError(f"LBA {s + at - vba}: VBA {at} has no physical block: run vdisk verify")
            checks.append((vba, ln, s, self._wanted_sums(vba, ln, s)))
            pos = s + ln
        if pos < b0 + n:
            _fill(into, (pos - b0) * bs, (b0 + n - pos) * bs, origin, pos * bs)
        try:
            wait = self._data.read_many_into(ranges, views) if ranges else None
        except OSError as e:
            raise self._read_error(e, ranges[0][1] // bs) from None

        def finish() -> memoryview:
            if wait is None:
                return into
            try:
                got = wait()
            except OSError as e:
                raise self._read_error(e, ranges[0][1] // bs) from None
            for (length, offset), lba, k in zip(ranges, lbas, got):
                if k != length:
                    raise IntegrityError(f"LBA {lba}: data file is shorter than PBA {(offset + k) // bs}")
            for vba, ln, lba, want in checks:
                self._check_sums(vba, ln, into[(lba - b0) * bs:(lba - b0 + ln) * bs], lba, want)
            return into
        return finish

    def _start_read_one(self, lba_map: ExtentMap, lba: int, into: memoryview):
        """One mapped block looked up with a floor per map and its read issued into ``into``; None otherwise.

        The common NBD request is one 4 KiB block (issue 13): a floor in the
        LBA and VBA trees, a get in the csum tree and one read, instead of
        the general path's piece lists. Anything else (a hole, a missing
        VBA or checksum) returns None here, and a short read or a mismatch
        makes ``finish()`` return None: the general path then reads the
        block again and answers it as it always has, so every error keeps
        its message.
        """
        vba = self._recent_lba.get(lba) if self._recent_lba and lba_map is self._lba else None
        if vba is None:
            e = lba_map.tree.floor(lba)
            if e is None:
                return None
            k, v = e
            if k + (v & MAX_LEN) <= lba:
                return None
            vba = (v >> LEN_BITS) + lba - k
        bs = self.block_size
        recent = self._recent.get(vba)
        if recent is not None:
            # Written since the last commit: the trees do not have it yet.
            pba, want = recent[0], recent[1]
        else:
            e = self._vba.tree.floor(vba)
            if e is None:
                return None
            k, v = e
            if k + (v & MAX_LEN) <= vba:
                return None
            pba = (v >> LEN_BITS) + vba - k
            want = self._csum.get(vba)
            if want is None:
                return None
        try:
            wait = self._data.read_many_into([(bs, pba * bs)], [into])
        except OSError as e:
            raise self._read_error(e, pba) from None

        def finish() -> memoryview | None:
            try:
                got = wait()[0]
            except OSError as e:
                raise self._read_error(e, pba) from None
            if got != bs or blake3.blake3(into).digest(CSUM_BYTES) != want:
                return None
            return into
        return finish

    def _read_error(self, e: OSError, pba: int) -> StorageError:
        # A failed read loses nothing acknowledged: the disk goes on, the
        # request fails with the device's error.
        return StorageError(f"reading the data of {self.location} at PBA {pba} failed: {e.strerror or e}")

    def _wanted_sums(self, vba: int, count: int, lba: int) -> list[bytes]:
        """The checksums of VBAs ``vba..`` (LBAs ``lba..``); fails if one is missing."""
        want = list(self._csum.items(vba, vba + count))
        if len(want) != count or want[0][0] != vba or want[-1][0] != vba + count - 1:
            have = {v for v, _ in want}
            i = next(i for i in range(count) if vba + i not in have)
            raise IntegrityError(f"LBA {lba + i}: checksum of VBA {vba + i} is missing: run vdisk verify")
        return [w for _, w in want]

    def _check_sums(self, vba: int, count: int, data: memoryview, lba: int, want: list[bytes]):
        """Fail unless each block of ``data`` (VBAs vba.., LBAs lba..) matches ``want``."""
        bs = self.block_size
        h = blake3.blake3
        got = [h(data[i:i + bs]).digest(CSUM_BYTES) for i in range(0, count * bs, bs)]
        if got != want:
            i = next(i for i in range(count) if got[i] != want[i])
            log.error("checksum mismatch at LBA %d (VBA %d) of %s", lba + i, vba + i, self.location)
            raise ChecksumMismatch(f"data at LBA {lba + i} (byte {(lba + i) * bs}) does not match its "
                                   f"checksum: refusing to return wrong data; run vdisk verify --data")


def _fill(into: memoryview, at: int, length: int, origin, offset: int) -> None:
    """Bytes ``[at, at + length)`` of a request that no extent maps (LBA byte ``offset`` on): the origin's, or zeros."""
    into[at:at + length] = origin.read(offset, length) if origin is not None else bytes(length)


def _nothing() -> bytes:
    return b""


def _never() -> bool:
    return False
