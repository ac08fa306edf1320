"""Snapshot deletion by sorted VBA sweep (design notes, 2), online and resumable.

Deleting snapshot S runs in three steps; only the first is one long step, and
it costs what S alone holds, never the disk size.

1. **Begin** (one commit, under the disk lock). Find the B+tree nodes only S
   reaches: S's nodes outside the subtrees its child still shares (found by
   seq, without reading shared subtrees) and newer than its parent. Write a
   ``disk/deleting`` record listing them, remove S's record and tree,
   re-parent its child (or the running point) to S's parent. From this
   commit on, S is gone for users; its nodes and blocks wait for the sweep.
2. **Scan** (batches). Read S's exclusive leaves; each entry at or above the
   parent's watermark that no live tree maps identically is a VBA run only S
   held. The runs go into a :class:`RunBuffer`, which spills sorted runs to
   files past its memory bound and merges them back in VBA order.
3. **Sweep** (batches), then **finish** (one commit). Walk the sorted runs,
   removing VBA -> PBA and checksum entries in one ascending pass and
   releasing their PBAs; then free the listed nodes, delete the record, and
   commit.

Every batch holds the disk lock for at most ``stall`` seconds
(:meth:`vdisk.Disk.run_in_batches`), so reads and writes (over NBD, or from
other threads) keep flowing in between.

Why batches can interleave with writes: ownership only ever moves one way.
No tree gains a VBA it did not map (VBAs are never reused, and nothing can
revert to S any more), so a run found exclusive stays exclusive. A VBA still
shared when scanned belongs to the live tree that maps it, which frees it
itself when it drops it. Removing a VBA twice is a no-op, so a crash at any
point is safe: the next open finds the record and runs steps 2 and 3 again
(run files are scratch and are rebuilt).
"""

from __future__ import annotations

import logging

from vdisk import format as fmt
from vdisk.disk import BATCH_COMMIT
from vdisk.errors import Cancelled, InvalidArgument
from vdisk.extents import ExtentMap

from .runbuffer import DEFAULT_LIMIT_BYTES, RunBuffer, remove_stale
from .usage import _unshared, entries_from, exclusive_nodes, shared_roots, snapshot_neighbours

log = logging.getLogger("vdisk")

DELETING_KEY = b"disk/deleting"
# Longest time one batch holds the disk lock (issue bar: no stall over 50 ms).
DEFAULT_STALL = 0.02
# The sweep commits after this many freed runs (each commit folds its frees
# into the free map under the lock: keep it to a few ms) or once this many
# tree nodes are dirty (bounded memory).
COMMIT_RUNS = 2000
COMMIT_DIRTY_NODES = 20000
# Blocks of one leaf entry checked per step of the scan (see _scan_steps).
SCAN_SLICE = 4096


def delete_snapshot(disk, name: str, buffer_bytes: int = DEFAULT_LIMIT_BYTES,
                    stall: float = DEFAULT_STALL, progress=None) -> int:
    """Delete snapshot ``name``; returns the number of blocks freed now.

    A snapshot that is the base of two or more others (a child snapshot and
    the running point after a revert, say) is deferred: it disappears for
    users at once, and its space returns when at most one dependent is left.
    ``progress`` is passed to :func:`run_pending`.
    """
    with disk.lifecycle_lock, disk.maintenance():
        with disk.lock:
            pending = disk.forest.meta_get(DELETING_KEY) is not None
            if not pending:
                disk.snapshot_record(name)
        freed = run_pending(disk, buffer_bytes, stall, progress) if pending else 0
        disk.sync_data()                   # see Disk.sync_data
        with disk.lock:
            disk.check_cancelled()
            rec = disk.snapshot_record(name)
            if _holders(disk, name) >= 2:
                with disk.changing():
                    _defer(disk, rec)
                return freed
            with disk.changing():
                begin(disk, name)
        freed += run_pending(disk, buffer_bytes, stall, progress)
        return freed + _reap(disk, buffer_bytes, stall, progress)


def reap_deferred(disk, buffer_bytes: int = DEFAULT_LIMIT_BYTES, stall: float = DEFAULT_STALL) -> int:
    """Delete deferred snapshots that have at most one dependent left."""
    with disk.lifecycle_lock, disk.maintenance():
        return _reap(disk, buffer_bytes, stall)


def _holders(disk, name: str) -> int:
    children = sum(1 for r in disk.snapshot_records() if r.parent == name)
    return children + (disk.state.parent == name)


def _defer(disk, rec: fmt.SnapshotRecord):
    """Rename the snapshot out of the users' namespace; keep every block and node.

    Its dependents become siblings once it is gone, sharing blocks and nodes
    newer than their next ancestor, which one parent and one watermark per
    tree cannot express. Kept whole, the snapshot stays their common parent
    and every ownership rule holds unchanged (ZFS's deferred destroy of a
    snapshot with clones works the same way).
    """
    from vdisk.disk import DEFERRED_PREFIX, SNAP_META_PREFIX, SNAP_TREE_PREFIX
    forest = disk.forest
    hidden = f"{DEFERRED_PREFIX}{rec.name}.{rec.created_ns}"
    forest.rename_tree(SNAP_TREE_PREFIX + rec.name, SNAP_TREE_PREFIX + hidden)
    forest.meta_put(SNAP_META_PREFIX + rec.name.encode(), None)
    old = rec.name
    rec.name = hidden
    forest.meta_put(SNAP_META_PREFIX + hidden.encode(), fmt.encode_snapshot(rec))
    for child in disk.snapshot_records():
        if child.parent == old:
            child.parent = hidden
            forest.meta_put(SNAP_META_PREFIX + child.name.encode(), fmt.encode_snapshot(child))
    if disk.state.parent == old:
        disk.state.parent = hidden
    disk.flush()
    log.info("snapshot %s is the base of several others: deleted for users, its space returns "
             "when at most one of them is left", old)


def _reap(disk, buffer_bytes: int, stall: float, progress=None) -> int:
    from vdisk.disk import DEFERRED_PREFIX
    freed = 0
    while True:
        with disk.lock:
            disk.check_cancelled()
            ready = [r.name for r in disk.snapshot_records()
                     if r.name.startswith(DEFERRED_PREFIX) and _holders(disk, r.name) <= 1]
            if not ready:
                return freed
            with disk.changing():
                begin(disk, ready[0])
        freed += run_pending(disk, buffer_bytes, stall, progress)


def begin(disk, name: str):
    """Step 1: hide the snapshot and record what it alone reaches (one commit)."""
    from vdisk.disk import RUNNING_TREE, SNAP_META_PREFIX, SNAP_TREE_PREFIX
    forest = disk.forest
    recs = {r.name: r for r in disk.snapshot_records()}
    rec = recs[name]
    children = [r for r in recs.values() if r.parent == name]
    if len(children) + (disk.state.parent == name) >= 2:
        raise InvalidArgument(f"internal: snapshot {name!r} has several dependents; defer it")
    _rec, parent, child_trees, _others = snapshot_neighbours(disk, name)
    shared = set()
    for child in child_trees:
        shared |= shared_roots(forest, child, rec.seq)
    parent_seq = parent.seq if parent else None
    nodes = [n.id for n in exclusive_nodes(forest, SNAP_TREE_PREFIX + name, parent_seq, shared)]
    forest.meta_put(DELETING_KEY, fmt.encode_deletion(fmt.DeletionRecord(
        name, parent.vba_watermark if parent else 0, parent_seq, nodes)))
    forest.drop_tree(SNAP_TREE_PREFIX + name)
    forest.meta_put(SNAP_META_PREFIX + name.encode(), None)
    for child in children:
        child.parent = rec.parent
        forest.meta_put(SNAP_META_PREFIX + child.name.encode(), fmt.encode_snapshot(child))
    if disk.state.parent == name:
        # The running point is the only dependent (others are refused above):
        # what it shared with the deleted snapshot is now its own.
        disk.state.parent = rec.parent
        disk.state.vba_watermark = parent.vba_watermark if parent else 1
        forest.tree(RUNNING_TREE).release_snapshot_seq(parent_seq if parent else 0)
    disk.flush()


def pending_deletion(disk) -> fmt.DeletionRecord | None:
    buf = disk.forest.meta_get(DELETING_KEY)
    return None if buf is None else fmt.decode_deletion(buf)


def run_pending(disk, buffer_bytes: int = DEFAULT_LIMIT_BYTES, stall: float = DEFAULT_STALL,
                progress=None) -> int:
    """Steps 2 and 3 of a begun deletion; returns the number of blocks freed.

    ``progress(phase, done, total)``, if given, is called under the disk lock
    after each step: phase "scan" counts the nodes read, "sweep" the runs of
    blocks freed.
    """
    with disk.lock:
        rec = pending_deletion(disk)
    if rec is None:
        return 0
    remove_stale(disk.path)
    with RunBuffer(disk.path, buffer_bytes) as buf:
        _scan(disk, rec, buf, stall, progress)
        freed = _sweep(disk, buf, stall, progress)
    disk.sync_data()
    with disk.lock:
        disk.check_cancelled()
        with disk.changing():
            disk.forest.free_node_ids(rec.node_ids)
            disk.forest.meta_put(DELETING_KEY, None)
            disk.flush()
    log.info("deleted snapshot %s: %d blocks, %d nodes freed", rec.name, freed, len(rec.node_ids))
    return freed


def _live_maps(disk, rec: fmt.DeletionRecord) -> list[ExtentMap]:
    """Maps of every tree that could share a VBA born after the parent."""
    from vdisk.disk import RUNNING_TREE, SNAP_TREE_PREFIX
    since = -1 if rec.parent_seq is None else rec.parent_seq
    names = [SNAP_TREE_PREFIX + r.name for r in disk.snapshot_records() if r.seq > since]
    names.append(RUNNING_TREE)
    return [ExtentMap(disk.forest.tree(n)) for n in names]


def _scan(disk, rec: fmt.DeletionRecord, buf: RunBuffer, stall: float, progress=None):
    maps: list[ExtentMap] = []

    def refresh_maps():
        # Trees may have been created or replaced while the lock was free.
        maps[:] = _live_maps(disk, rec)

    disk.run_in_batches(_scan_steps(disk, rec, buf, maps, progress), stall, refresh_maps)


def _scan_steps(disk, rec: fmt.DeletionRecord, buf: RunBuffer, maps: list[ExtentMap], progress=None):
    """Scan the deletion's leaves, yielding after each bounded piece of work.

    A leaf entry can cover millions of blocks (a disk filled sequentially is
    one extent) that the other trees split into as many pieces, so entries
    are checked in slices of SCAN_SLICE blocks. The leaves only the deleted
    snapshot reached cannot change meanwhile: no tree reaches them.
    """
    for done, node_id in enumerate(rec.node_ids, 1):
        node = disk.forest.node(node_id)
        if progress is not None:
            progress("scan", done, len(rec.node_ids))
        yield
        if not node.leaf:
            continue
        for lba, vba, count in entries_from(node, rec.floor_vba):
            for off in range(0, count, SCAN_SLICE):
                n = min(SCAN_SLICE, count - off)
                for v, c in _unshared(lba + off, vba + off, n, maps):
                    buf.add(v, c)
                yield


def _sweep(disk, buf: RunBuffer, stall: float, progress=None) -> int:
    freed = [0]
    disk.run_in_batches(_sweep_steps(disk, buf, freed, progress), stall)
    return freed[0]


def _sweep_steps(disk, buf: RunBuffer, freed: list[int], progress=None):
    since_commit = 0
    for done, run in enumerate(buf.sorted_runs(), 1):
        freed[0] += disk.forget_vbas(*run)
        if progress is not None:
            progress("sweep", done, buf.total)
        since_commit += 1
        # Commit in small steps: a commit folds every pending free into the
        # free map under the lock, ~4.5 us each, so it must stay short.
        if since_commit >= COMMIT_RUNS or disk.forest.dirty_nodes >= COMMIT_DIRTY_NODES:
            since_commit = 0
            yield BATCH_COMMIT
        else:
            yield


def pending_work(disk) -> bool:
    """Whether a deletion is half done or a deferred snapshot may be reaped."""
    from vdisk.disk import DEFERRED_PREFIX
    if disk.forest.meta_get(DELETING_KEY) is not None:
        return True
    return any(r.name.startswith(DEFERRED_PREFIX) for r in disk.snapshot_records())


def resume_on_open(disk):
    """Finish a deletion a crash interrupted (run beside I/O by a writable open)."""
    try:
        with disk.lifecycle_lock, disk.maintenance():
            if pending_deletion(disk) is not None:
                run_pending(disk)
            _reap(disk, DEFAULT_LIMIT_BYTES, DEFAULT_STALL)
            remove_stale(disk.path)
    except Cancelled:
        log.info("closing %s: a snapshot deletion stopped; it continues at the next open", disk.path)
    except Exception as e:        # the pending record keeps everything safe; retried later
        log.warning("could not finish deleting a snapshot in %s (%s); will retry on the next open",
                    disk.path, e)
