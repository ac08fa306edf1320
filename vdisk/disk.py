"""The disk engine: a block device stored as copy-on-write B+trees.

Addresses (each name means exactly one thing; see docs/ARCHITECTURE.md):

* ``lba`` - logical block address: block number the user reads and writes.
* ``vba`` - virtual block address: identity of one written block version.
  Born once, never reused; snapshots share it by mapping the same VBA.
* ``pba`` - physical block address: block number in the data file.
* ``seq`` - B+tree operation sequence number (see :mod:`vdisk.btree.tree`).

Maps: each snapshot and the running point own an LBA -> VBA extent tree
(sharing unchanged nodes); one VBA -> PBA extent tree says where each virtual
block lives, and a csum tree holds the blake3 of each VBA's block.

Write path (see docs/ARCHITECTURE.md for the picture):

1. Sub-block edges are read and merged, so whole blocks are written.
2. New PBAs are allocated (never the PBAs of live data) and the data is
   written there with ``pwrite``. Data is never overwritten in place, so a
   crash cannot leave committed metadata pointing at half-new data.
3. Blocks whose VBA was born after the running point's newest snapshot
   (``vba >= vba_watermark``) keep their VBA: only VBA -> PBA changes, and the
   old PBA is released. Others get new VBAs, and the LBA -> VBA tree changes
   copy-on-write; the old VBAs stay with the snapshot.
4. Checksums of the new blocks go into the csum tree, keyed by VBA.

Nothing of this is durable until :meth:`Disk.flush`: it ``fdatasync``s the data
file, then commits every metadata change in one synchronous LMDB transaction
(and punches holes for PBAs that the commit freed). A crash loses at most the
writes since the last flush and never corrupts anything committed. Work is
also committed by itself every ``AUTO_COMMIT_BLOCKS`` written blocks, which
bounds memory.

A :class:`Disk` is safe to share between threads: one lock serialises calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass

import blake3

from vdisk.btree import Forest, Layout, LmdbNodeStore
from vdisk.errors import (AlreadyExists, Busy, Cancelled, ChecksumMismatch, DiskFailed, IntegrityError,
                          InvalidArgument, NoSpace, NotADisk, NotFound, ReadOnly, StorageError, VdiskError,
                          quote)

from . import format as fmt
from .alloc import Allocator
from .extents import MAX_TARGET, ExtentMap, unpack
from .units import check_block_size, check_disk_size

log = logging.getLogger("vdisk")

CSUM_BYTES = 16
# Snapshot names: printable, at most SNAPSHOT_NAME_BYTES of UTF-8, not
# starting with '-' (it would read as an option, and '-' is "none" in lists)
# or '.' ('.', '..' and hidden files in a mount), no '/' (a path in a mount)
# and no '~' (the prefix of deferred deletions). Spaces inside are allowed.
SNAPSHOT_NAME_BYTES = 128
SNAPSHOT_NAME_RULE = (f"a snapshot name is 1 to {SNAPSHOT_NAME_BYTES} bytes of printable UTF-8, not starting "
                      f"with '-', '.' or a space, not ending with a space, without '/' or '~'")
AUTO_COMMIT_BLOCKS = 16384
MAX_DISK_SIZE = 1 << 60
# Larger than LMDB's reader table for its default 126 readers (about 8 KiB).
LMDB_LOCK_FILE_RESERVE = 64 << 10
# Free runs shorter than this stay in the data file for reuse (see _punch_free_runs).
PUNCH_MIN_BYTES = 64 << 10
# Writes at least this large start their writeback at once (see start_writeback).
EARLY_WRITEBACK_BYTES = 256 << 10
# Batches of maintenance work (Disk.run_in_batches): the pause after a batch
# as a share of the time it held the lock, the shortest pause, and what a
# step yields to have its work committed.
BATCH_IO_SHARE = 0.5
BATCH_MIN_PAUSE = 0.0005
BATCH_COMMIT = object()
# zero/trim unmap this much per lock hold; each extent they touch counts as
# this many written blocks toward the automatic commit (dirty nodes it costs).
ZERO_SLICE_BYTES = 256 << 20
UNMAP_EXTENT_COST = 4
# Attempts of one read-only request whose view a writer's commit moved (_in_view).
VIEW_RETRIES = 8

RUNNING_TREE = "lba"
VBA_TREE = "vba"
CSUM_TREE = "csum"
FREE_TREE = "free"
SNAP_TREE_PREFIX = "snap/"
SNAP_META_PREFIX = b"disk/snap/"
# Snapshots deleted while they were the base of several others; users cannot
# name them (see snapshots/delete.py).
DEFERRED_PREFIX = "~"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Return the range's space to the file system; False if unsupported."""
    r = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                        ctypes.c_int64(offset), ctypes.c_int64(length))
    return r == 0


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> int:
    """Ask the kernel to start writing a range to the device, without waiting.

    The commit's fdatasync then finds most of a large write already on its
    way, instead of writing it all while the caller waits; the device works
    while this process hashes the next data. Returns 0 or the errno: an I/O
    error here means written data may already be lost.
    """
    r = _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)
    return ctypes.get_errno() if r else 0


def checksum(block) -> bytes:
    return blake3.blake3(block).digest(CSUM_BYTES)


@dataclass
class Extent:
    """One run of ``block_status``: byte offset, length, and what it holds."""

    offset: int
    length: int
    allocated: bool
    zero: bool


@dataclass
class SnapshotInfo:
    name: str
    created: float          # Unix time
    seq: int
    size: int               # disk size when taken
    parent: str | None
    exclusive_bytes: int | None = None


def check_snapshot_lookup(name: str):
    """Refuse what cannot name an existing snapshot, but no more than that.

    Snapshots made under an older, looser rule (names like ``-`` or ``..``)
    must stay reachable to be read, reverted to and deleted; only creating
    (and renaming) applies the full rule. Hidden deferred snapshots are not
    users' to name.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"bad snapshot name {name!r}: it must be a non-empty string")
    if name.startswith(DEFERRED_PREFIX) or "/" in name or "\0" in name:
        raise NotFound(f"no snapshot named {quote(name)}")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"bad snapshot name {quote(name)}: it is not valid UTF-8") from None


def validate_snapshot_name(name: str):
    """Refuse a name outside the rule (SNAPSHOT_NAME_RULE), saying what is wrong."""
    if not isinstance(name, str):
        raise InvalidArgument(f"bad snapshot name {name!r}: it must be a string")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        size = None
    if not name:
        why = "it is empty"
    elif size is None:
        why = "it is not valid UTF-8"
    elif size > SNAPSHOT_NAME_BYTES:
        why = f"it is {size} bytes long, more than {SNAPSHOT_NAME_BYTES}"
    elif name[0] in "-.":
        why = f"it starts with {name[0]!r}"
    elif "/" in name or "~" in name:
        why = f"it contains {'/' if '/' in name else '~'!r}"
    elif not name.isprintable():
        why = "it contains a control or other unprintable character"
    elif name != name.strip():
        why = "it starts or ends with a space"
    else:
        return
    raise InvalidArgument(f"bad snapshot name {quote(name)}: {why} ({SNAPSHOT_NAME_RULE})")


class _Reader:
    """The read API shared by the running point and snapshot views."""

    disk: "Disk"
    size: int
    block_size: int

    def _lba_map(self) -> ExtentMap:
        raise NotImplementedError

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
            return self.disk._read_blocks(self._lba_map(), b0, b1 - b0) if length else b""
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
        with d._view():
            self._check_range(offset, length)
            b0 = offset // bs
            b1 = -(-end // bs)
            pos = offset
            for s, _vba, n in self._lba_map().pieces(b0, b1 - b0):
                a, b = max(s * bs, offset), min((s + n) * bs, end)
                add(pos, a, False)
                add(a, b, True)
                pos = b
            add(pos, end, False)
        return out

    def allocated_bytes(self) -> int:
        d = self.disk
        with d._view():
            return sum(n for _, _, n in self._lba_map().extents()) * self.block_size


class SnapshotView(_Reader):
    """A read-only view of one snapshot, from :meth:`Disk.open_snapshot`."""

    readonly = True

    def __init__(self, disk: "Disk", name: str, record: fmt.SnapshotRecord):
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


class Disk(_Reader):
    """A virtual disk container. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path: str, readonly: bool, _lock_fd: int | None):
        self.path = path
        self.readonly = readonly
        self.disk = self
        self._lock = threading.RLock()
        self._delete_lock = threading.Lock()     # one snapshot deletion at a time
        self._lock_fd = _lock_fd
        self._closed = False
        self._closing = False
        self._failed: str | None = None          # the cause, once the disk stopped (see _stop)
        self._jobs = 0                           # maintenance jobs running (see maintenance)
        self._jobs_done = threading.Condition(threading.Lock())
        self._view_id = None
        self._resume_thread: threading.Thread | None = None
        self._blocks_since_commit = 0
        self.store = None
        self._fd = None
        try:
            meta_dir = os.path.join(path, "meta")
            if not os.path.isdir(meta_dir):
                raise IntegrityError(f"{path} is not a vdisk disk: {meta_dir} is missing")
            self.store = LmdbNodeStore(meta_dir, readonly=readonly, create=False)
            data_path = os.path.join(path, "data")
            if not os.path.exists(data_path):
                raise IntegrityError(f"data file {data_path} is missing; the disk cannot be read")
            try:
                self._fd = os.open(data_path, os.O_RDONLY if readonly else os.O_RDWR)
            except OSError as e:
                raise IntegrityError(f"cannot open the data file {data_path}: {e.strerror}") from None
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise IntegrityError(f"data file {data_path} is not a regular file")
            self._load()
            if not readonly:
                self._check_counters()
                self._resume_in_background()
        except BaseException:
            # LMDB allows one environment per file per process: a store left
            # open here would make every later open of this disk fail.
            if self._fd is not None:
                os.close(self._fd)
            if self.store is not None:
                self.store.close()
            self._release_lock()
            raise

    # ----------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, path: str | os.PathLike, size: int, block_size: int = 4096) -> "Disk":
        """Create a new disk container (a directory) and open it for writing."""
        path = os.fspath(path)
        check_block_size(block_size)
        check_disk_size(size, block_size, MAX_DISK_SIZE)
        if os.path.exists(path):
            raise AlreadyExists(f"{path} already exists")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise NotFound(f"directory {parent} does not exist")
        # Built under a hidden name and renamed into place, so that a crash
        # or a power cut leaves either no disk or a whole one, never a
        # half-built container that open refuses.
        base = os.path.basename(os.path.abspath(path))
        _remove_stale_builds(parent, base)
        tmp = os.path.join(parent, f".{base}.creating-{os.getpid()}")
        try:
            _build_container(tmp, size, block_size)
            _rename_noreplace(tmp, path)
            _fsync_dir(parent)
        except OSError as e:
            _remove_tree(tmp)
            if e.errno == errno.EEXIST or e.errno == errno.ENOTEMPTY:
                raise AlreadyExists(f"{path} already exists") from None
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space to create {path}") from None
            raise StorageError(f"cannot create {path}: {e.strerror or e}") from None
        except BaseException:
            _remove_tree(tmp)
            raise
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False) -> "Disk":
        path = os.fspath(path)
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise NotADisk(path)
            raise NotFound(f"no disk at {path}")
        # Before the lock, which creates DISK/lock: a directory that is not a
        # disk must be left as it was. One with a data file but no meta/ is
        # a damaged disk, which the constructor names.
        if not os.path.isdir(os.path.join(path, "meta")) and not os.path.exists(os.path.join(path, "data")):
            raise NotADisk(path)
        lock_fd = None if readonly else _take_lock(path)
        return cls(path, readonly, lock_fd)

    def _load(self):
        self.forest = Forest(self.store)
        cfg = fmt.decode_config(self.forest.meta_get(b"disk/config"))
        self.config = cfg
        self.block_size = cfg.block_size
        self.size = cfg.size
        self.state = fmt.decode_state(self.forest.meta_get(b"disk/state"))
        for name in (RUNNING_TREE, VBA_TREE, CSUM_TREE, FREE_TREE):
            if not self.forest.has_tree(name):
                raise IntegrityError(f"metadata tree {name!r} is missing: the disk is damaged")
        self._lba = ExtentMap(self.forest.tree(RUNNING_TREE))
        self._vba = ExtentMap(self.forest.tree(VBA_TREE))
        self._csum = self.forest.tree(CSUM_TREE)
        self.alloc = Allocator(self.forest.tree(FREE_TREE), self.state.pba_end)

    def _check_counters(self):
        """Refuse to write on counters that are behind what the maps hold.

        The records that carry them are small and unchecksummed beyond their
        format; a damaged one (a counter gone back) would make new writes
        reuse live VBAs or node ids, or change snapshot blocks in place: a
        snapshot would then read wrong bytes. A few lookups at the ends of
        the trees catch it before any write; readers need no such check.
        """
        self.forest.check_counters()
        st = self.state

        def damaged(what):
            raise IntegrityError(f"disk {self.path}: {what}: the running point's record is damaged; "
                                 f"run vdisk verify")
        last = self._vba.tree.last()
        if last is not None and st.vba_next < last[0] + unpack(last[1])[1]:
            damaged(f"next VBA {st.vba_next} is not past the mapped VBA {last[0]}")
        last = self._csum.last()
        if last is not None and st.vba_next <= last[0]:
            damaged(f"next VBA {st.vba_next} is not past the checksummed VBA {last[0]}")
        if not 1 <= st.vba_watermark <= st.vba_next:
            damaged(f"watermark {st.vba_watermark} is outside 1..{st.vba_next}")
        last = self.alloc.free.last()
        if last is not None and st.pba_end < last[0] + last[1]:
            damaged(f"PBA end {st.pba_end} is before the free extent at {last[0]}")
        for rec in self._snapshot_records():
            if rec.vba_watermark > st.vba_next or rec.seq > self.forest.seq:
                damaged(f"snapshot {rec.name!r} is newer than the running point's counters")
            if rec.name == st.parent and st.vba_watermark < rec.vba_watermark:
                # Blocks of the parent at or above the watermark would be
                # rewritten in place: the snapshot would change.
                damaged(f"watermark {st.vba_watermark} is below its snapshot's {rec.vba_watermark}")

    def _resume_in_background(self):
        """Finish a snapshot deletion a crash interrupted, beside the caller's I/O.

        In a thread, so that opening stays fast however much the deletion
        has left to do; close() stops it at a batch boundary, and the
        pending record makes the next open carry on.
        """
        from vdisk.snapshots.delete import pending_work, resume_on_open
        if pending_work(self):
            self._resume_thread = threading.Thread(target=resume_on_open, args=(self,),
                                                   name="vdisk-resume", daemon=True)
            self._resume_thread.start()

    def wait_maintenance(self, timeout: float | None = None) -> bool:
        """Wait for the work an open resumed in the background; False on timeout."""
        t = self._resume_thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    @contextlib.contextmanager
    def _view(self):
        """The lock, and for a read-only opener one pinned committed view.

        A read-only opener shares nothing with the writer but the committed
        database, which the writer changes under it (nodes rewritten in
        place, PBAs reused once their release is durable). Each request
        therefore reads every node in one LMDB read transaction, and reloads
        the trees when that view is newer than the last one. Yields a
        function that tells whether the writer has committed since.
        """
        with self._lock:
            self._check_open()
            if not self.readonly:
                yield _never
                return
            with self.store.read_view() as view:
                if view != self._view_id:
                    self._view_id = view
                    self._load()
                yield lambda: self.store.current_view() != view

    def _in_view(self, fn):
        """``fn()`` in one view; a read-only opener retries when the view moved.

        The only way a read in a pinned view can fail on a healthy disk is
        that the writer reused a PBA the view still maps (freed and rewritten
        by a later commit): its checksum then fails. Retried in the newer
        view, the read finds the block where it lives now; a failure in an
        unchanged view is real and is raised.
        """
        for attempt in range(VIEW_RETRIES):
            with self._view() as moved:
                try:
                    return fn()
                except IntegrityError:
                    if attempt + 1 == VIEW_RETRIES or not moved():
                        raise

    def _ensure_view(self):
        """Read-only openers follow the writer's commits between calls."""
        if not self.readonly:
            return
        view = self.store.current_view()
        if view != self._view_id:
            self._view_id = view
            self._load()

    def _check_open(self):
        if self._closed:
            raise InvalidArgument("disk is closed")
        if self._failed is not None:
            raise DiskFailed(self.path, self._failed)

    def _stop(self, e: BaseException) -> BaseException:
        """Stop the disk after ``e`` left unflushed writes lost or half-applied.

        The durability contract (docs/ARCHITECTURE.md): once a write-back or
        a commit failed, or a change to the maps stopped half-way, no later
        flush may succeed, because writes acknowledged before it may be gone
        (Linux drops dirty pages whose write-back failed, so a retried
        fdatasync would succeed over the hole). Every later request raises
        DiskFailed until the disk is reopened, which finds the last
        successful flush. Returns the exception to raise now.
        """
        if isinstance(e, OSError):
            what = f"I/O error on {self.path}: {e.strerror or e}"
            e = (NoSpace(f"no space left on the file system holding {self.path}")
                 if e.errno == errno.ENOSPC else StorageError(what))
        if self._failed is not None or self.readonly:
            return e
        self._failed = str(e) or type(e).__name__
        log.error("disk %s stopped: %s; writes since the last flush may be lost; reopen it",
                  self.path, self._failed)
        if isinstance(e, NoSpace):
            return NoSpace(f"{e}; writes since the last successful flush are lost, the disk is "
                           f"consistent: free space, then reopen it")
        return e

    @contextlib.contextmanager
    def changing(self):
        """Wrap a change to the in-memory maps: if it fails half-way, stop the disk.

        Changes are not undone one by one; instead, a half-done change can
        never be committed (see _stop), and the last commit stays the truth.
        """
        try:
            yield
        except Cancelled:
            raise
        except BaseException as e:
            err = self._stop(e)
            if err is e:
                raise
            raise err from None

    @contextlib.contextmanager
    def maintenance(self):
        """Register long work (deletion, compact) that close() must wait for.

        The work checks :meth:`check_cancelled` at each batch boundary, so
        close() waits at most one batch.
        """
        with self._jobs_done:
            self._check_open()
            if self._closing:
                raise Cancelled(f"disk {self.path} is closing")
            self._jobs += 1
        try:
            yield
        finally:
            with self._jobs_done:
                self._jobs -= 1
                self._jobs_done.notify_all()

    def check_cancelled(self):
        if self._closing:
            raise Cancelled(f"disk {self.path} is closing; the work resumes at the next open")
        self._check_open()

    def close(self):
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
        # Outside the lock: the jobs need it to reach their batch boundary.
        with self._jobs_done:
            while self._jobs:
                self._jobs_done.wait(1.0)
        with self._lock:
            try:
                if not self.readonly and self._failed is None:
                    self._commit()
            finally:
                self._closed = True
                os.close(self._fd)
                self.store.close()
                self._release_lock()

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _lba_map(self) -> ExtentMap:
        return self._lba

    def _check_writable(self):
        self._check_open()
        if self.readonly:
            raise ReadOnly(f"disk {self.path} is open read-only")

    # ----------------------------------------------------------- reads

    def _read_blocks(self, lba_map: ExtentMap, b0: int, n: int) -> bytes | bytearray:
        bs = self.block_size
        pieces = lba_map.pieces(b0, n)
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
        for s, vba, ln in pieces:
            self._read_vba(vba, ln, view[(s - b0) * bs:(s - b0 + ln) * bs], s)
        return out

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
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
                got = os.preadv(self._fd, [dst], pba * bs)
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

    # ----------------------------------------------------------- writes

    def write(self, offset: int, data) -> None:
        """Write bytes at any offset; acknowledged, durable at the next flush."""
        self._check_writable()
        length = len(data)
        self._check_range(offset, length)
        if length == 0:
            return
        bs = self.block_size
        with self._lock:
            self._check_open()
            b0 = offset // bs
            b1 = -(-(offset + length) // bs)
            head = offset - b0 * bs
            if head or (offset + length) % bs:
                buf = bytearray(b1 * bs - b0 * bs)
                # Only the edge blocks need their old contents.
                buf[:bs] = self._read_blocks(self._lba, b0, 1)
                if b1 - 1 > b0:
                    buf[-bs:] = self._read_blocks(self._lba, b1 - 1, 1)
                buf[head:head + length] = data
                data = buf
            self._write_blocks(b0, memoryview(data).cast("B"))

    def _write_blocks(self, b0: int, data: memoryview):
        bs = self.block_size
        n = len(data) // bs
        if self.state.vba_next + n > MAX_TARGET:
            raise NoSpace(f"disk {self.path} has used up its {MAX_TARGET} virtual block addresses")
        with self.changing():
            pieces = self.alloc.allocate(n)
        try:
            pos = 0
            for pba, count in pieces:
                _pwrite_all(self._fd, data[pos * bs:(pos + count) * bs], pba * bs)
                if count * bs >= EARLY_WRITEBACK_BYTES:
                    err = start_writeback(self._fd, pba * bs, count * bs)
                    if err == errno.EIO:
                        raise OSError(err, os.strerror(err))
                pos += count
        except OSError as e:
            # Only new, unmapped PBAs were written: the write fails as a
            # whole and every acknowledged write is as it was.
            for pba, count in pieces:
                self.alloc.release(pba, count)
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left on the file system holding {self.path}") from None
            raise StorageError(f"writing to {self.path}/data failed: {e.strerror or e}") from None
        with self.changing():
            self._map_written(b0, n, data, pieces)

    def _map_written(self, b0: int, n: int, data: memoryview, pieces: list[tuple[int, int]]):
        bs = self.block_size
        h = blake3.blake3
        sums = [h(data[i:i + bs]).digest(CSUM_BYTES) for i in range(0, n * bs, bs)]
        wm = self.state.vba_watermark
        csum_items = []
        # Split [b0, b0+n) into runs that keep their VBA and runs that need new ones.
        fresh_runs = []
        pos = b0
        for s, vba, ln in _split_at_watermark(self._lba.pieces(b0, n), wm):
            if s > pos:
                fresh_runs.append((pos, s - pos))
            if vba >= wm:
                old = self._vba.punch(vba, ln)
                for _v, pba, c in old:
                    self.alloc.release(pba, c)
                self._map_vbas(vba, _slice_pieces(pieces, s - b0, ln))
                csum_items.extend(zip(range(vba, vba + ln), sums[s - b0:s - b0 + ln]))
            else:
                fresh_runs.append((s, ln))
            pos = s + ln
        if pos < b0 + n:
            fresh_runs.append((pos, b0 + n - pos))
        for s, ln in _join_runs(fresh_runs):
            vba = self.state.vba_next
            self.state.vba_next += ln
            self._lba.punch(s, ln)
            self._lba.map(s, vba, ln)
            self._map_vbas(vba, _slice_pieces(pieces, s - b0, ln))
            csum_items.extend(zip(range(vba, vba + ln), sums[s - b0:s - b0 + ln]))
        if len(csum_items) == 1:
            self._csum.insert(*csum_items[0])
        else:
            csum_items.sort()
            self._csum.insert_sorted(csum_items)
        self._after_work(n)

    def _map_vbas(self, vba: int, pbas: list[tuple[int, int]]):
        for pba, count in pbas:
            self._vba.map(vba, pba, count)
            vba += count

    def _unmap_blocks(self, b0: int, n: int) -> int:
        """Unmap LBAs [b0, b0+n); returns the number of extents it touched."""
        wm = self.state.vba_watermark
        pieces = self._lba.punch(b0, n)
        for _s, vba, ln in _split_at_watermark(pieces, wm):
            if vba >= wm:
                self._forget_vbas(vba, ln)
        return len(pieces)

    def _forget_vbas(self, vba: int, count: int) -> int:
        """Drop VBAs no tree maps any more: their PBAs and checksums.

        Returns the number of blocks released; VBAs already gone are skipped.
        """
        released = 0
        for _v, pba, c in self._vba.punch(vba, count):
            self.alloc.release(pba, c)
            released += c
        csum = self._csum
        for v, _ in list(csum.items(vba, vba + count)):
            csum.delete(v)
        return released

    def trim(self, offset: int, length: int) -> None:
        """Unmap a range; it reads as zeros afterwards (partial blocks are zeroed)."""
        self.zero(offset, length)

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros, unmapping whole blocks instead of writing."""
        self._check_writable()
        self._check_range(offset, length)
        if length == 0:
            return
        bs = self.block_size
        end = offset + length
        first = -(-offset // bs)
        last = end // bs
        if first >= last:
            self.write(offset, bytes(length))
            return
        if offset < first * bs:
            self.write(offset, bytes(first * bs - offset))
        if end > last * bs:
            self.write(last * bs, bytes(end - last * bs))
        # In slices, each under the lock once: a huge trim neither holds the
        # lock nor grows the uncommitted state without bound, and counts
        # toward the automatic commit like the writes it replaces.
        step = max(1, ZERO_SLICE_BYTES // bs)
        for b in range(first, last, step):
            with self._lock:
                self._check_open()
                with self.changing():
                    touched = self._unmap_blocks(b, min(step, last - b))
                    self._after_work(touched * UNMAP_EXTENT_COST)

    def _after_work(self, blocks: int):
        self._blocks_since_commit += blocks
        if self._blocks_since_commit >= AUTO_COMMIT_BLOCKS:
            self._commit()

    def flush(self) -> None:
        """Make every acknowledged write durable; after a failure, never succeeds."""
        with self._lock:
            self._check_open()
            if self.readonly:
                return
            self._commit()

    def _commit(self):
        """fdatasync the data, then commit every metadata change at once.

        Any failure stops the disk (see _stop): a failed fdatasync has lost
        the dirty pages it could not write, and a failed metadata commit
        leaves in-memory frees that must never be used.
        """
        self._blocks_since_commit = 0
        with self.changing():
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                raise StorageError(f"writing back {self.path}/data failed: {e.strerror or e}") \
                    if e.errno != errno.ENOSPC else e
            freed = self.alloc.prepare_commit()
            self.state.pba_end = self.alloc.end
            self.forest.meta_put(b"disk/state", fmt.encode_state(self.state))
            self.forest.commit()
        self._punch_free_runs(freed)

    def _punch_free_runs(self, freed: list[tuple[int, int]]):
        """Give the file system back free runs of at least PUNCH_MIN_BYTES.

        Each punch costs a journal transaction (and a device discard on a
        file system mounted with ``discard``): 250-400 us for one 4 KiB block
        here, which capped random overwrites at ~3,000/s when every freed
        block was punched. Scattered single blocks instead stay in the file as
        free space the allocator hands out again; a freed block that joins
        free neighbours into a long enough run is punched with them.
        """
        bs = self.block_size
        min_blocks = max(1, PUNCH_MIN_BYTES // bs)
        free = self.alloc.free
        done = set()
        for pba, count in freed:
            if count >= min_blocks:
                run = (pba, count)
            else:
                run = free.floor(pba)
                if run is None or run[0] + run[1] < pba + count or run[1] < min_blocks:
                    continue
            if run not in done:
                done.add(run)
                punch_hole(self._fd, run[0] * bs, run[1] * bs)

    def compact(self, stall: float = 0.02, progress=None) -> int:
        """Return every free block still in the data file to the file system.

        Single freed blocks are not punched when they are freed (see
        :meth:`_punch_free_runs`); this walks the free map and punches the
        parts of free extents that still hold data (found with SEEK_DATA, so
        holes cost nothing), in batches (:meth:`run_in_batches`) so I/O
        continues meanwhile. Under the lock the free map is exact (blocks
        being written are not in it), so no live block can be punched.
        Returns the bytes punched. ``progress(phase, done, total)``, if
        given, is called under the lock after each extent with the bytes of
        free space looked at so far and the free space there was at the start
        (phase "compact"); it must be quick.
        """
        self._check_writable()
        punched = [0]
        with self.maintenance():
            self.run_in_batches(self._compact_steps(punched, progress), stall)
        return punched[0]

    def _compact_steps(self, punched: list[int], progress=None):
        bs = self.block_size
        cursor = 0
        with self._lock:
            total = self.alloc.free_blocks() * bs
        seen = 0
        while True:
            # The free map may change between batches: look up from a cursor.
            item = next(self.alloc.free.items(cursor), None)
            if item is None:
                return
            pba, count = item
            cursor = pba + count
            punched[0] += self._punch_data_in(pba * bs, count * bs)
            if progress is not None:
                # Frees since the start can make the walk longer than the total.
                seen += count * bs
                progress("compact", min(seen, total), total)
            yield

    def run_in_batches(self, steps, stall: float, before_batch=None):
        """Advance the generator ``steps`` under the lock, ``stall`` seconds at a time.

        For long maintenance work beside live I/O (snapshot deletion,
        compact). Between batches the lock stays free for ``BATCH_IO_SHARE``
        times as long as the batch held it, so waiting I/O gets about a third
        of the time (Python's locks are not fair: released and retaken at
        once, the waiting I/O would starve). A step that yields
        ``BATCH_COMMIT`` has its work committed before the next batch.
        Raises Cancelled at a batch boundary once the disk is closing; a
        step that fails stops the disk (see changing).
        """
        while True:
            commit = False
            with self._lock:
                self.check_cancelled()
                start = time.monotonic()
                with self.changing():
                    if before_batch is not None:
                        before_batch()
                    for step in steps:
                        if step is BATCH_COMMIT:
                            commit = True
                            break
                        if time.monotonic() - start >= stall:
                            break
                    else:
                        return
                held = time.monotonic() - start
            time.sleep(max(BATCH_MIN_PAUSE, held * BATCH_IO_SHARE))
            if commit:
                start = time.monotonic()
                self.sync_data()
                with self._lock:
                    self._check_open()
                    self._commit()
                time.sleep(max(BATCH_MIN_PAUSE, (time.monotonic() - start) * BATCH_IO_SHARE))

    def sync_data(self):
        """fdatasync the data file without taking the lock.

        Most of a commit's time can be writeback of recent writes; done first,
        outside the lock, the commit proper (which must sync again) finds
        little left to write and holds the lock briefly. A failure stops
        the disk like a failed commit: the pages it could not write are gone.
        """
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            with self._lock:
                err = self._stop(StorageError(f"writing back {self.path}/data failed: {e.strerror or e}")
                                 if e.errno != errno.ENOSPC else e)
            raise err from None

    def _punch_data_in(self, offset: int, length: int) -> int:
        """Punch the data (not the holes) of [offset, offset+length) of the data file."""
        end = offset + length
        done = 0
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:       # no data after pos
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            punch_hole(self._fd, data, hole - data)
            done += hole - data
            pos = hole
        return done

    def resize(self, new_size: int) -> None:
        """Grow the disk (shrinking is refused: it would destroy data)."""
        self._check_writable()
        with self._lock:
            self._check_open()
            check_disk_size(new_size, self.block_size, MAX_DISK_SIZE, current=self.size)
            with self.changing():
                self.config.size = self.size = new_size
                self.forest.meta_put(b"disk/config", fmt.encode_config(self.config))
                self._commit()

    # ----------------------------------------------------------- snapshots

    def _snapshot_record(self, name: str) -> fmt.SnapshotRecord:
        buf = self.forest.meta_get(SNAP_META_PREFIX + name.encode())
        if buf is None:
            raise NotFound(f"no snapshot named {name!r}")
        return fmt.decode_snapshot(name, buf)

    def _snapshot_records(self) -> list[fmt.SnapshotRecord]:
        recs = [fmt.decode_snapshot(_snapshot_name(k), v) for k, v in self.forest.meta_items(SNAP_META_PREFIX)]
        # Snapshots taken with no change between them share a seq.
        recs.sort(key=lambda r: (r.seq, r.created_ns))
        return recs

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Freeze every write completed so far under ``name``. O(1)."""
        validate_snapshot_name(name)
        self._check_writable()
        with self._lock:
            self._check_open()
            key = SNAP_META_PREFIX + name.encode()
            if self.forest.meta_get(key) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            with self.changing():
                self.forest.snapshot(RUNNING_TREE, SNAP_TREE_PREFIX + name)
                rec = fmt.SnapshotRecord(name, time.time_ns(), self.forest.seq, self.state.vba_next,
                                         self.size, self.state.parent)
                self.forest.meta_put(key, fmt.encode_snapshot(rec))
                self.state.parent = name
                self.state.vba_watermark = self.state.vba_next
                self._commit()
            return self._info(rec)

    def _info(self, rec: fmt.SnapshotRecord, exclusive: int | None = None) -> SnapshotInfo:
        return SnapshotInfo(rec.name, rec.created_ns / 1e9, rec.seq, rec.size, rec.parent, exclusive)

    def snapshots(self, exclusive: bool = True) -> list[SnapshotInfo]:
        """Snapshots oldest first, with the bytes each one alone holds."""
        from vdisk.snapshots.usage import exclusive_blocks
        with self._view():
            recs = self._snapshot_records()
            by_name = {r.name: r for r in recs}
            out = []
            for rec in recs:
                if rec.name.startswith(DEFERRED_PREFIX):
                    continue
                # A deferred parent is an implementation detail: show the
                # nearest ancestor users know.
                while rec.parent and rec.parent.startswith(DEFERRED_PREFIX):
                    rec.parent = by_name[rec.parent].parent
                excl = exclusive_blocks(self, rec.name) * self.block_size if exclusive else None
                out.append(self._info(rec, excl))
            return out

    def open_snapshot(self, name: str) -> SnapshotView:
        check_snapshot_lookup(name)
        with self._view():
            return SnapshotView(self, name, self._snapshot_record(name))

    def revert(self, name: str) -> None:
        """Make the running point read exactly as snapshot ``name``."""
        check_snapshot_lookup(name)
        self._check_writable()
        with self._delete_lock, self._lock:
            self._check_open()
            rec = self._snapshot_record(name)
            from vdisk.snapshots.usage import drop_running_point_exclusive
            with self.changing():
                drop_running_point_exclusive(self)
                self.forest.clone(SNAP_TREE_PREFIX + name, RUNNING_TREE, replace=True)
                self._lba = ExtentMap(self.forest.tree(RUNNING_TREE))
                self.state.parent = name
                self.state.vba_watermark = self.state.vba_next
                if rec.size != self.size:
                    self.config.size = self.size = rec.size
                    self.forest.meta_put(b"disk/config", fmt.encode_config(self.config))
                self._commit()
        # The running point left its old base, which may have been waiting
        # for that to be deleted.
        from vdisk.snapshots.delete import reap_deferred
        reap_deferred(self)

    def rename_snapshot(self, old: str, new: str) -> SnapshotInfo:
        """Give snapshot ``old`` the name ``new`` in one commit; returns it as renamed.

        Only the name changes: the tree, its blocks and the record (created,
        seq, watermark, size) stay, and the children's and the running
        point's ``parent`` follow, so ownership, deletion and verify see the
        same family. ``new`` must pass the creation rule; ``old`` only the
        lookup rule, so a snapshot named under an older rule can be given a
        good name. A crash leaves one name or the other, never both.

        A :class:`SnapshotView` is bound to a name and to the snapshot it
        opened, so one opened as ``old`` fails with NotFound from now on,
        as after a delete (and never reads a later snapshot called ``old``):
        open it again as ``new``. The front ends refuse the rename while
        the snapshot is in use instead.
        """
        check_snapshot_lookup(old)
        validate_snapshot_name(new)
        self._check_writable()
        with self._lock:
            self._check_open()
            rec = self._snapshot_record(old)
            new_key = SNAP_META_PREFIX + new.encode()
            if self.forest.meta_get(new_key) is not None:
                raise AlreadyExists(f"snapshot {quote(new)} already exists")
            # Checked before any change: a failure inside changing() would
            # stop the disk over what is only a damaged record.
            if not self.forest.has_tree(SNAP_TREE_PREFIX + old) or self.forest.has_tree(SNAP_TREE_PREFIX + new):
                raise IntegrityError(f"snapshot {quote(old)} or {quote(new)}: record and tree disagree; "
                                     f"the disk is damaged: run vdisk verify")
            with self.changing():
                self.forest.rename_tree(SNAP_TREE_PREFIX + old, SNAP_TREE_PREFIX + new)
                self.forest.meta_put(SNAP_META_PREFIX + old.encode(), None)
                rec.name = new
                self.forest.meta_put(new_key, fmt.encode_snapshot(rec))
                # Hidden deferred snapshots included: one may have it as parent.
                for child in self._snapshot_records():
                    if child.parent == old:
                        child.parent = new
                        self.forest.meta_put(SNAP_META_PREFIX + child.name.encode(), fmt.encode_snapshot(child))
                if self.state.parent == old:
                    self.state.parent = new
                self._commit()
            return self._info(rec)

    def delete_snapshot(self, name: str, buffer_bytes: int | None = None, progress=None) -> int:
        """Delete a snapshot, returning the space only it held; returns blocks freed.

        Runs in short batches (see :mod:`vdisk.snapshots.delete`), so other
        threads' reads and writes continue meanwhile. ``buffer_bytes`` bounds
        the memory of the sort buffer (default 64 MiB); past it, sorted runs
        spill to files in the disk directory. ``progress(phase, done, total)``,
        if given, is called under the lock as the batches advance (phases
        "scan": nodes read, and "sweep": runs of blocks freed); it must be
        quick.
        """
        check_snapshot_lookup(name)
        self._check_writable()
        from vdisk.snapshots.delete import DEFAULT_LIMIT_BYTES, delete_snapshot
        return delete_snapshot(self, name, buffer_bytes or DEFAULT_LIMIT_BYTES, progress=progress)

    # ----------------------------------------------------------- info

    def info(self) -> dict:
        from vdisk.snapshots.usage import exclusive_blocks
        with self._view():
            bs = self.block_size
            # Deleted while the base of several others: hidden, and still
            # holding what only it holds until at most one of them is left.
            deferred = sum(exclusive_blocks(self, r.name) for r in self._snapshot_records()
                           if r.name.startswith(DEFERRED_PREFIX))
            return {
                "path": os.path.abspath(self.path),
                "size": self.size,
                "block_size": bs,
                "format_version": self.config.version,
                "allocated_bytes": self.allocated_bytes(),
                "physical_bytes": (self.alloc.end - self.alloc.free_blocks()) * bs,
                "file_bytes": os.fstat(self._fd).st_blocks * 512,
                "deferred_bytes": deferred * bs,
                "snapshots": [s.__dict__ for s in self.snapshots(exclusive=False)],
            }


def _snapshot_name(key: bytes) -> str:
    try:
        return key[len(SNAP_META_PREFIX):].decode()
    except UnicodeDecodeError:
        raise IntegrityError(f"snapshot record key {key[:80]!r} is not UTF-8: the disk is damaged; "
                             f"run vdisk verify") from None


def _never() -> bool:
    return False


def _split_at_watermark(pieces, wm: int):
    """Split (lba, vba, count) pieces whose VBAs straddle the watermark.

    An extent can run across it when a write born after the newest snapshot
    happens to continue a snapshot's VBAs; its two halves have different
    owners, so they must be judged separately (judging by the first VBA
    leaked the newer half, or rewrote snapshot blocks in place).
    """
    for s, vba, ln in pieces:
        if vba < wm < vba + ln:
            head = wm - vba
            yield s, vba, head
            yield s + head, wm, ln - head
        else:
            yield s, vba, ln


def _slice_pieces(pieces: list[tuple[int, int]], start: int, count: int) -> list[tuple[int, int]]:
    """The PBAs of blocks [start, start+count) of a write allocated as ``pieces``."""
    out = []
    pos = 0
    for pba, n in pieces:
        a, b = max(start, pos), min(start + count, pos + n)
        if a < b:
            out.append((pba + a - pos, b - a))
        pos += n
        if pos >= start + count:
            break
    return out


def _join_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for s, n in runs:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((s, n))
    return out


def _pwrite_all(fd: int, data: memoryview, offset: int):
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _take_lock(path: str) -> int:
    lock_path = os.path.join(path, "lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise IntegrityError(f"cannot open lock file {lock_path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode().strip() or "unknown"
        finally:
            os.close(fd)
        raise Busy(f"disk {path} is in use by PID {pid}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _build_container(path: str, size: int, block_size: int):
    os.mkdir(path, 0o700)
    # Owner-only whatever the umask: a disk holds a guest's data.
    os.chmod(path, 0o700)
    meta = os.path.join(path, "meta")
    os.mkdir(meta, 0o700)
    os.chmod(meta, 0o700)
    for name in ("data", "lock", "meta/data.mdb"):
        _create_private(os.path.join(path, name))
    _reserve(os.path.join(meta, "lock.mdb"), LMDB_LOCK_FILE_RESERVE)
    store = LmdbNodeStore(meta)
    try:
        forest = Forest(store)
        extent = Layout("u64", "u64")
        for name in (RUNNING_TREE, VBA_TREE, FREE_TREE):
            forest.create_tree(name, extent)
        forest.create_tree(CSUM_TREE, Layout("u64", f"bytes:{CSUM_BYTES}"))
        forest.meta_put(b"disk/config", fmt.encode_config(fmt.Config(block_size, size, time.time_ns())))
        forest.meta_put(b"disk/state", fmt.encode_state(fmt.State(1, 1, 0, None)))
        forest.commit()
    finally:
        store.close()
    # The files' contents are synced (LMDB's commit, empty files); their
    # names are durable only once their directories are.
    for d in (meta, path):
        _fsync_dir(d)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: str, dst: str):
    """rename(2) that fails with EEXIST instead of replacing an empty directory."""
    r = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if r == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), dst)
    # A file system without the flag: the check and the rename are two steps.
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def _remove_stale_builds(parent: str, base: str):
    """Remove half-built containers of ``base`` whose creating process is gone."""
    prefix = f".{base}.creating-"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or not name[len(prefix):].isdigit():
            continue
        try:
            os.kill(int(name[len(prefix):]), 0)
        except ProcessLookupError:
            _remove_tree(os.path.join(parent, name))
        except OSError:
            pass


def _create_private(path: str):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reserve(path: str, size: int):
    """Create ``path`` with ``size`` bytes really allocated.

    LMDB mmaps its reader table (lock.mdb) after growing it sparse; on a full
    file system the first store into it is a SIGBUS, not an error. Allocating
    it first turns that into ENOSPC here.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: str):
    import shutil
    shutil.rmtree(path, ignore_errors=True)
