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

Nothing of this is durable until :meth:`Disk.flush`: it appends the records
of the writes since the last flush to the redo log in the data store and
syncs it once (:mod:`vdisk.journal`); a full commit (snapshot operations,
close, the automatic one) syncs the data store, then commits every metadata
change in one synchronous LMDB transaction (and punches holes for PBAs that
the commit freed). A crash loses at most the writes since the last flush and
never corrupts anything committed. Work is
also committed by itself every ``AUTO_COMMIT_BLOCKS`` written blocks
(sooner for large writes, and whenever ``AUTO_COMMIT_DIRTY_NODES`` nodes wait
to be written), which bounds memory and the PBAs released but not reusable.

A :class:`Disk` is safe to share between threads: one lock serialises calls.

The engine is split along its seams; each part is a mixin of :class:`Disk`
in its own module, over the state Disk holds:

* :mod:`vdisk.reader` - views and the read path; :mod:`vdisk.writes` - the
  write path and its ownership rule; :mod:`vdisk.recent` - one-block
  writes waiting to settle into the VBA and csum trees; :mod:`vdisk.journal` - the redo log
  of flushes between commits; :mod:`vdisk.commit` - commits and the failure contract; :mod:`vdisk.maintenance` - batched work and compact.
* :mod:`vdisk.datastore` - the PBA space's interface and commit protocol
  (:mod:`vdisk.datastore_file`, :mod:`vdisk.datastore_memory`);
  :mod:`vdisk.container` - creating a disk; :mod:`vdisk.lockfile` - the
  writer's lock; :mod:`vdisk.names` - tree, record and snapshot names.

What stays here is the lifecycle (open, load, close), the snapshot
operations, and the knobs tests tune on this module (the automatic commit
and the trim slices, read by the methods below at call time).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from vdisk.btree import Forest
from vdisk.errors import AlreadyExists, IntegrityError, NotFound, ReadOnly, quote

from . import format as fmt
from .alloc import Allocator
from .anchor import Anchor
from .commit import PUNCH_MIN_BYTES, Commits  # noqa: F401  (importable from here)
from .container import LMDB_LOCK_FILE_RESERVE, create_container, require_container  # noqa: F401
from .datastore import DataStore
from .datastore_file import FileDataStore, NotARegularFile, punch_hole, start_writeback  # noqa: F401
from .extents import ExtentMap, unpack
from .journal import Journal
from .location import Stores, open_stores
from .location import create as create_location
from .location import parse as parse_location
from .maintenance import BATCH_COMMIT, BATCH_IO_SHARE, BATCH_MIN_PAUSE, Maintenance  # noqa: F401
from .names import (CSUM_BYTES, CSUM_TREE, DEFERRED_PREFIX, EXTRA_META_PREFIX, FREE_TREE, RUNNING_TREE,  # noqa: F401
                    SNAP_META_PREFIX, SNAP_TREE_PREFIX, SNAPSHOT_NAME_BYTES, SNAPSHOT_NAME_RULE, VBA_TREE,
                    check_snapshot_lookup, checksum, snapshot_name, validate_snapshot_name)
from .recent import RecentWrites
from .reader import VIEW_RETRIES, Extent, Reader, ReadPath, SnapshotView  # noqa: F401
from .units import check_block_size, check_disk_size
from .writes import EARLY_WRITEBACK_BYTES, WritePath  # noqa: F401

# The automatic commit inside writes (see _after_work). Issue 13: committed
# every 16384 blocks (64 MiB), a stream of random 4 KiB writes on a 1 GiB
# disk paid a third of its time in commits, each rewriting nearly all of the
# disk's ~3,000 metadata nodes; once every leaf is dirty a commit writes no
# more for waiting longer. So a commit waits for AUTO_COMMIT_BLOCKS blocks
# (the PBAs released and not yet reusable: the data file's growth), except
# that a light one (at most one dirty node per AUTO_COMMIT_BLOCKS_PER_NODE
# blocks: large writes) still comes after AUTO_COMMIT_LIGHT_BLOCKS, as
# before (deferred, 1 MiB sequential writes ran slower), and any comes once
# AUTO_COMMIT_DIRTY_NODES nodes wait (memory: ~64-128 MiB of node data).
AUTO_COMMIT_BLOCKS = 65536
AUTO_COMMIT_LIGHT_BLOCKS = 16384
AUTO_COMMIT_BLOCKS_PER_NODE = 32
AUTO_COMMIT_DIRTY_NODES = 32768
RECENT_PER_NODE = 16
MAX_DISK_SIZE = 1 << 60
# zero/trim unmap this much per lock hold; each extent they touch counts as
# this many written blocks toward the automatic commit (dirty nodes it costs).
ZERO_SLICE_BYTES = 256 << 20
# A zero of the running point during an online conversion writes zeros, this much at a time.
ZERO_WRITE_BYTES = 4 << 20
UNMAP_EXTENT_COST = 4


@dataclass
class SnapshotInfo:
    name: str
    created: float          # Unix time
    seq: int
    size: int               # disk size when taken
    parent: str | None
    exclusive_bytes: int | None = None


class Disk(Anchor, Reader, ReadPath, WritePath, RecentWrites, Journal, Commits, Maintenance):
    """A virtual disk: a container directory or ``rados:POOL/NAME``. Use
    :meth:`create` or :meth:`open`.

    ``data_store`` (keyword only, for tests and later stores) replaces the
    data file as the PBA space: any :class:`vdisk.datastore.DataStore`.
    ``path`` is the disk's local directory (for a rados disk, its state
    directory on this host: vdisk.location.state_dir); ``location`` names it.
    """

    def __init__(self, stores: Stores, readonly: bool):
        """Use :meth:`open`: ``stores`` (vdisk.location.open_stores) are the disk's from now on."""
        self.path = stores.path
        self.where = stores.where
        self.readonly = readonly
        self.disk = self
        self._lock = threading.RLock()
        self._delete_lock = threading.Lock()     # one snapshot deletion at a time
        self._release = stores.release
        self._closed = False
        self._closing = False
        self._failed: str | None = None          # the cause, once the disk stopped (see _stop)
        self._jobs = 0                           # maintenance jobs running (see maintenance)
        self._jobs_done = threading.Condition(threading.Lock())
        self._view_id = None
        self._blocks_since_commit = 0
        self._recent = {}
        self._recent_lba = {}
        self._init_journal()
        self.store = stores.node_store
        self._data: DataStore | None = stores.data_store
        try:
            if readonly:
                self._load_pinned()
            else:
                self._load()
                self._check_counters()
                self._replay_log()
        except BaseException:
            # LMDB allows one environment per file per process: a store left
            # open here would make every later open of this disk fail.
            self._data.close()
            self.store.close()
            self._release_lock()
            raise

    # ----------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, location, size: int, block_size: int = 4096, *,
               data_store: DataStore | None = None) -> "Disk":
        """Create a new disk and open it for writing.

        ``location``: a path (a new container directory) or ``rados:POOL/NAME``
        (or a :class:`vdisk.location.RadosLocation`, which names the cluster).
        """
        location = parse_location(location)
        check_block_size(block_size)
        check_disk_size(size, block_size, MAX_DISK_SIZE)
        create_location(location, size, block_size)
        return cls.open(location, data_store=data_store)

    @classmethod
    def open(cls, location, readonly: bool = False, *, data_store: DataStore | None = None,
             break_lock: bool = False) -> "Disk":
        """Open the disk at ``location`` (see :meth:`create`).

        Writable: takes the writer's lock (Busy names the holder). On RADOS,
        ``break_lock`` first fences the holder (blocklists it in the cluster)
        and then takes its lock over: for a holder that died or hangs.
        """
        stores = open_stores(location, readonly, break_lock=break_lock, data_store=data_store)
        return cls(stores, readonly)

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
        self._load_anchor()

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
            raise IntegrityError(f"disk {self.location}: {what}: the running point's record is damaged; "
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
        for rec in self.snapshot_records():
            if rec.vba_watermark > st.vba_next or rec.seq > self.forest.seq:
                damaged(f"snapshot {rec.name!r} is newer than the running point's counters")
            if rec.name == st.parent and st.vba_watermark < rec.vba_watermark:
                # Blocks of the parent at or above the watermark would be
                # rewritten in place: the snapshot would change.
                damaged(f"watermark {st.vba_watermark} is below its snapshot's {rec.vba_watermark}")
        self._check_anchor_counters(damaged)

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
                    self._close_commit()
            finally:
                self._closed = True
                self._close_origin()
                self._data.close()
                self.store.close()
                self._release_lock()

    def _release_lock(self):
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def location(self) -> str:
        """Where the disk lives: its directory, or ``rados:POOL/NAME``."""
        return self.where.get("location") or self.where["path"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _lba_map(self) -> ExtentMap:
        return self._lba

    def check_writable(self):
        self._check_open()
        if self.readonly:
            raise ReadOnly(f"disk {self.location} is open read-only")

    # ----------------------------------------------------------- unmapping and pacing

    def trim(self, offset: int, length: int) -> None:
        """Unmap a range; it reads as zeros afterwards (partial blocks are zeroed)."""
        self.zero(offset, length)

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros, unmapping whole blocks instead of writing."""
        self._zero_to(None, offset, length)

    def _zero_to(self, which: str | None, offset: int, length: int) -> None:
        self.check_writable()
        self._check_range(offset, length)
        if length == 0:
            return
        if self._unmapping_shows_origin(which):
            # An unmapped range would read from the origin again: write the zeros.
            for pos in range(offset, offset + length, ZERO_WRITE_BYTES):
                self.write(pos, bytes(min(ZERO_WRITE_BYTES, offset + length - pos)))
            return
        bs = self.block_size
        end = offset + length
        first = -(-offset // bs)
        last = end // bs
        if first >= last:
            self._write_to(which, offset, bytes(length))
            return
        if offset < first * bs:
            self._write_to(which, offset, bytes(first * bs - offset))
        if end > last * bs:
            self._write_to(which, last * bs, bytes(end - last * bs))
        # In slices, each under the lock once: a huge trim neither holds the
        # lock nor grows the uncommitted state without bound, and counts
        # toward the automatic commit like the writes it replaces.
        step = max(1, ZERO_SLICE_BYTES // bs)
        for b in range(first, last, step):
            with self._lock:
                self._check_open()
                with self.changing(logged=True):
                    line = self._line(which)
                    count = min(step, last - b)
                    before = len(self.alloc.pending)
                    touched = self._unmap_blocks(b, count, line)
                    self._log_zero(line, b, count, sum(n for _p, n in self.alloc.pending[before:]))
                    self._after_work(touched * UNMAP_EXTENT_COST)

    def _after_work(self, blocks: int):
        self._blocks_since_commit += blocks
        if self._replaying:
            # Replay commits nothing: the log it redoes holds it (vdisk/journal.py).
            return
        n = self._blocks_since_commit
        # A recent write (vdisk/recent.py) holds ~250 bytes until it settles,
        # then dirties a node or two: it makes the commit node-heavy at once,
        # and counts toward the memory budget at RECENT_PER_NODE a node.
        recent = len(self._recent)
        dirty = self.forest.dirty_nodes + recent // RECENT_PER_NODE
        heavy = dirty + recent
        if (n >= AUTO_COMMIT_BLOCKS or dirty >= AUTO_COMMIT_DIRTY_NODES
                or (n >= AUTO_COMMIT_LIGHT_BLOCKS and heavy * AUTO_COMMIT_BLOCKS_PER_NODE <= n)):
            self._commit()

    def resize(self, new_size: int) -> None:
        """Grow the disk (shrinking is refused: it would destroy data)."""
        self.check_writable()
        with self._settled():
            self._check_open()
            self.check_not_converting("resize")
            check_disk_size(new_size, self.block_size, MAX_DISK_SIZE, current=self.size)
            with self.changing():
                self.config.size = self.size = new_size
                self.forest.meta_put(b"disk/config", fmt.encode_config(self.config))
                self._commit()

    # ----------------------------------------------------------- snapshots

    # ------------------------------------------ the interface of snapshots/
    # What the lifecycle algorithms (deletion, usage) use of the engine:
    # the locks, records, forgetting VBAs (writes.py), batches and commits
    # (maintenance.py, flush), the change guard (commit.py).

    @property
    def lock(self):
        """The lock that serialises every call, as a context manager; maintenance
        holds it one batch at a time. Inside it every map is exact: the recent
        writes (vdisk/recent.py) are in the trees."""
        return self._settled()

    @property
    def lifecycle_lock(self) -> threading.Lock:
        """Held by one snapshot deletion (or a revert) at a time."""
        return self._delete_lock

    def snapshot_record(self, name: str) -> fmt.SnapshotRecord:
        buf = self.forest.meta_get(SNAP_META_PREFIX + name.encode())
        if buf is None:
            raise NotFound(f"no snapshot named {name!r}")
        return fmt.decode_snapshot(name, buf)

    def snapshot_records(self) -> list[fmt.SnapshotRecord]:
        recs = [fmt.decode_snapshot(snapshot_name(k), v) for k, v in self.forest.meta_items(SNAP_META_PREFIX)]
        # Snapshots taken with no change between them share a seq.
        recs.sort(key=lambda r: (r.seq, r.created_ns))
        return recs

    def create_snapshot(self, name: str) -> SnapshotInfo:
        """Freeze every write completed so far under ``name``. O(1)."""
        validate_snapshot_name(name)
        self.check_writable()
        with self._settled():
            self._check_open()
            self.check_not_converting("take a snapshot")
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

    def snapshots(self, exclusive: bool = False) -> list[SnapshotInfo]:
        """Snapshots oldest first; ``exclusive``: with the bytes each one alone holds.

        Sizing is the snapshot lifecycle's (:func:`exclusive_blocks`, which
        the layer above supplies); the engine alone lists without it.
        """
        with self.view():
            recs = self.snapshot_records()
            by_name = {r.name: r for r in recs}
            out = []
            for rec in recs:
                if rec.name.startswith(DEFERRED_PREFIX):
                    continue
                # A deferred parent is an implementation detail: show the
                # nearest ancestor users know.
                while rec.parent and rec.parent.startswith(DEFERRED_PREFIX):
                    rec.parent = by_name[rec.parent].parent
                excl = self.exclusive_blocks(rec.name) * self.block_size if exclusive else None
                out.append(self._info(rec, excl))
            return out

    def open_snapshot(self, name: str) -> SnapshotView:
        check_snapshot_lookup(name)
        with self.view():
            return SnapshotView(self, name, self.snapshot_record(name))

    def clone_running_point(self, rec: fmt.SnapshotRecord) -> None:
        """Make the running point a copy of snapshot ``rec`` (its tree, size,
        parent and watermark), and commit. O(1).

        The caller holds the lock inside :meth:`changing`, and has first
        released what only the running point held (vdisk.snapshots.usage):
        this is the engine's half of a revert.
        """
        self.forest.clone(SNAP_TREE_PREFIX + rec.name, RUNNING_TREE, replace=True)
        self._lba = ExtentMap(self.forest.tree(RUNNING_TREE))
        self.state.parent = rec.name
        self.state.vba_watermark = self.state.vba_next
        if rec.size != self.size:
            self.config.size = self.size = rec.size
            self.forest.meta_put(b"disk/config", fmt.encode_config(self.config))
        self._commit()

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
        self.check_writable()
        with self._settled():
            self._check_open()
            self.check_not_converting("rename a snapshot")
            rec = self.snapshot_record(old)
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
                for child in self.snapshot_records():
                    if child.parent == old:
                        child.parent = new
                        self.forest.meta_put(SNAP_META_PREFIX + child.name.encode(), fmt.encode_snapshot(child))
                if self.state.parent == old:
                    self.state.parent = new
                self._commit()
            return self._info(rec)

    # ------------------------------------------ records of the layers above

    def extra_record(self, name: str) -> bytes | None:
        """The committed (or staged) record ``name`` of a layer above, or None."""
        with self.view():
            return self.forest.meta_get(EXTRA_META_PREFIX + name.encode())

    def stage_extra_record(self, name: str, value: bytes | None) -> None:
        """Set (``None``: delete) record ``name``; it becomes durable with the
        next commit, atomically with every change made before it, so a layer
        above can record its progress together with the data it wrote."""
        self.check_writable()
        with self._settled():
            self._check_open()
            with self.changing():
                self.forest.meta_put(EXTRA_META_PREFIX + name.encode(), value)

    # ----------------------------------------------------------- info

    def exclusive_blocks(self, name: str) -> int:
        """Blocks only snapshot ``name`` holds: the snapshot lifecycle's to say."""
        raise NotImplementedError("sizing snapshots belongs to vdisk.snapshots (use vdisk.Disk)")

    def info(self) -> dict:
        with self.view():
            bs = self.block_size
            # Deleted while the base of several others: hidden, and still
            # holding what only it holds until at most one of them is left.
            deferred = sum(self.exclusive_blocks(r.name) for r in self.snapshot_records()
                           if r.name.startswith(DEFERRED_PREFIX))
            return {
                "path": self.location,
                "where": dict(self.where),
                "size": self.size,
                "block_size": bs,
                "format_version": self.config.version,
                "allocated_bytes": self.allocated_bytes(),
                # The blocks data takes: not the redo log's few, nor those
                # released and free at the next commit.
                "physical_bytes": (self.alloc.end - self.alloc.free_blocks() - self.alloc.pending_blocks()
                                   - len(self.log_blocks())) * bs,
                "file_bytes": self._data.allocated_bytes(),
                "deferred_bytes": deferred * bs,
                "snapshots": [s.__dict__ for s in self.snapshots(exclusive=False)],
            }
