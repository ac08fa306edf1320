"""Consistency verification of a whole disk: ``vdisk verify`` (design notes, 3).

Everything is read from one committed view of the metadata, an LMDB read
transaction pinned with :meth:`LmdbNodeStore.read_view`. A writer in another
process goes on writing and committing meanwhile and is never paused; the view
simply does not see its newer commits.

Phases:

1. Records. ``disk/config``, ``disk/state`` and every ``disk/snap/NAME``
   decode; every snapshot record has its tree ``snap/NAME`` (frozen, taken at
   the record's seq) and every snapshot tree a record; a parent exists, is
   older and has no later watermark; the running point's parent exists; no
   counter is behind what it numbered.
2. Trees: snapshots oldest first, then the running point, then the VBA,
   checksum and free maps, through :func:`vdisk.btree.check.check_tree`. It
   keeps a map of the nodes verified so far (so it holds the parent's); a node
   of a later tree found there is accepted without reading its subtree again,
   so N snapshots that differ little cost little more than one. Every node
   that is read is also checked, once, for what its entries mean:

   - LBA -> VBA leaves: extents are not empty, do not overlap, end inside
     their tree's disk size, and map VBAs born before the snapshot (below its
     watermark); the part of an extent below the parent's watermark is mapped
     the same way by the parent, which is what deletion relies on.
   - VBA -> PBA leaves: extents not empty, not overlapping, below
     ``vba_next``, their PBAs inside the PBA space ``[0, pba_end)``.
   - free leaves: extents not empty, not overlapping, inside the PBA space.

3. Cross-checks: every VBA a tree maps has a PBA and a checksum; every
   VBA -> PBA entry is mapped by some tree (else it leaks); checksums exist
   only for mapped VBAs; no PBA is mapped twice or both mapped and free, and
   mapped plus free make exactly the PBA space; no snapshot maps a VBA that
   the running point maps at or above its watermark (the running point would
   rewrite it in place); every stored node is reached by some tree, and a
   node several trees reach is old enough that no writable one changes it.
   A snapshot deletion in progress (record ``disk/deleting``, see
   :mod:`.delete`) owns the nodes it lists and may still hold the VBAs their
   leaves map: those are neither leaks nor missing, but its nodes must still
   be stored and no live tree may reach them (they are freed when it ends).
4. The data file holds the blocks the VBA -> PBA map places in it; the
   redo log's flushes not yet committed to the maps are counted (without
   replaying them: :func:`vdisk.journal.pending`), and what replay would
   fail on is a problem. With ``data``: every mapped block is read back
   and checked against its blake3. A writer may move or free a block after
   the view was taken, so a mismatch is reported only when a fresh view,
   taken before and again after reading the block once more, still maps
   that VBA to the same PBA and checksum and the bytes still do not match.

Problem kinds: :mod:`.verify_report`. Each phase has its module: records
(:mod:`.verify_records`), the walk (:mod:`.verify_walk`, whose per-map
checks are :mod:`.verify_visitors`), cross-checks (:mod:`.verify_cross`, over
the interval algebra of :mod:`.verify_runs`) and the data file and blocks
(:mod:`.verify_data`); what they hand each other is a
:class:`~.verify_state.Verification`. This module opens the view and runs
them in order, which is also the order problems are reported in.

Memory: the map of verified nodes (a small summary per node) and one entry per
distinct extent; no data blocks are held.
"""

from __future__ import annotations

import os
import struct
import time

from vdisk.btree import Forest, LmdbNodeStore
from vdisk.errors import IntegrityError, NotFound
from vdisk.location import is_rados, open_stores
from vdisk.location import parse as parse_location

from . import verify_cross, verify_data, verify_records, verify_walk
from .verify_report import Problem, Report, tree_label
from .verify_state import Verification

__all__ = ["Problem", "Report", "tree_label", "verify", "verify_open_disk"]

# Decoded nodes kept by the view's forest: enough for the lookups into parent
# trees that follow the walk; verified nodes are never read twice otherwise.
CACHE_NODES = 8192


def verify(path, data: bool = False, progress=None) -> Report:
    """Verify the disk at ``path`` (or ``rados:POOL/NAME``) against its newest committed state.

    Safe beside a writer in another process: it opens the metadata read-only
    and takes no lock. ``progress(phase, done, total)`` is called as work
    advances (phase ``"trees"``, then ``"data"``). Raises a :class:`VdiskError`
    when the disk cannot be opened at all; damage is reported, not raised.
    """
    location = parse_location(path)
    if is_rados(location):
        stores = open_stores(location, readonly=True)
        try:
            return _run(Verification(stores.path, stores.node_store, progress, stores.data_store,
                                     label=str(location)), data)
        finally:
            stores.data_store.close()
            stores.node_store.close()
            stores.release()
    path = location
    if not os.path.isdir(path):
        raise NotFound(f"no disk at {path}")
    meta = os.path.join(path, "meta")
    if not os.path.isdir(meta):
        raise IntegrityError(f"{path} is not a vdisk disk: {meta} is missing")
    store = LmdbNodeStore(meta, readonly=True, create=False)
    try:
        return _run(Verification(path, store, progress), data)
    finally:
        store.close()


def verify_open_disk(disk, data: bool = False, progress=None) -> Report:
    """Verify an open :class:`~vdisk.Disk` (writable or not) in this process.

    Checks its committed state, so call ``disk.checkpoint()`` first to
    include every write (a flush through the redo log is durable but not in
    the committed metadata until the next full commit). LMDB cannot open one environment twice in a process, hence
    this variant reuses the disk's own store. It takes no lock: its view is
    its own read transaction, so other threads keep reading and writing.
    """
    rados = disk.where.get("kind") == "rados"
    return _run(Verification(disk.path, disk.store, progress, disk._data if rados else None,
                             label=disk.location if rados else None), data)


def _run(v: Verification, data: bool) -> Report:
    t0 = time.monotonic()
    with v.store.read_view():
        # A fresh forest reads counters, records and nodes inside the view
        # only, never another process's newer commit.
        try:
            v.forest = Forest(v.store, cache_nodes=CACHE_NODES)
        except struct.error:
            # Forest decodes its counters without a length check.
            raise IntegrityError("the B+tree store's counters (counter/seq, counter/node) are damaged") from None
        verify_records.check_records(v)
        results = verify_walk.walk_trees(v)
        deleting = verify_cross.check_deletion(v, results)
        verify_cross.check_nodes_stored(v, results, deleting)
        verify_cross.cross_check(v)
        verify_data.check_file(v)
        verify_data.check_log(v)
        if data:
            verify_data.data_pass(v)
    # Outside the first view: each suspect is looked up again in fresh ones.
    if v.suspects:
        verify_data.recheck_suspects(v)
    v.report.seconds = time.monotonic() - t0
    return v.report
