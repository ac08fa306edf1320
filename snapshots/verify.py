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
4. With ``data``: every mapped block is read back and checked against its
   blake3. A writer may move or free a block after the view was taken, so a
   mismatch is reported only when a fresh view, taken before and again after
   reading the block once more, still maps that VBA to the same PBA and
   checksum and the bytes still do not match.

Problem kinds (:attr:`Problem.kind`): those of the B+tree checker (corrupt,
missing, version, record, layout, key-order, bounds, fanout, depth, seq,
shared, count, shape, leak: see :mod:`vdisk.btree.check`) and:

============  ================================================================
kind          meaning
============  ================================================================
snapshot      snapshot records incoherent: a record without a tree, a tree
              without a record, a missing or newer parent, watermarks out of
              order, a tree not taken at its record's seq
counter       a counter is behind what it numbered (vba_next, seq, node id)
extent        an extent is empty, overlaps the next one, or ends past the disk
unmapped      a tree maps a VBA that has no VBA -> PBA entry
csum          a mapped VBA has no checksum, or a checksum belongs to no VBA
vba-leak      a VBA -> PBA entry that no tree maps: its space is never freed
ownership     a VBA mapped where the ownership rules say it cannot be: born
              after the snapshot, missing from the parent below its
              watermark, or shared with the running point above its watermark
pba-double    a PBA is mapped by two VBAs
pba-free      a PBA is both mapped and free
alloc         allocator totals do not add up: free extents overlap, extents
              past ``pba_end``, PBAs neither mapped nor free
data          a data block does not match its checksum, or cannot be read
data-file     the data file is missing, not a regular file, cannot be opened,
              or ends before blocks the VBA -> PBA map places in it
deletion      the record of a deletion in progress is damaged, or lists a
              node that is missing or that a live tree still reaches
============  ================================================================

Memory: the map of verified nodes (a small summary per node) and one entry per
distinct extent; no data blocks are held.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from dataclasses import asdict, dataclass, field

from vdisk import format as fmt
from vdisk.btree import Forest, Layout, LmdbNodeStore
from vdisk.btree.check import check_sharing, check_tree
from vdisk.disk import (CSUM_BYTES, CSUM_TREE, FREE_TREE, RUNNING_TREE, SNAP_META_PREFIX,
                        SNAP_TREE_PREFIX, VBA_TREE, checksum)
from vdisk.errors import IntegrityError, NotFound, UnsupportedVersion, VdiskError
from vdisk.extents import LEN_BITS, MAX_LEN, ExtentMap

from .delete import DELETING_KEY
from .verify_data import check_data_file

# Decoded nodes kept by the view's forest: enough for the lookups into parent
# trees that follow the walk; verified nodes are never read twice otherwise.
CACHE_NODES = 8192
# Blocks read per system call in the data pass.
DATA_CHUNK_BLOCKS = 256
# How often a block that keeps moving under a writer is re-read before giving up.
RECHECK_ATTEMPTS = 3

_EXTENT = Layout("u64", "u64")
_CSUM = Layout("u64", f"bytes:{CSUM_BYTES}")
_CORE_TREES = {RUNNING_TREE: _EXTENT, VBA_TREE: _EXTENT, CSUM_TREE: _CSUM, FREE_TREE: _EXTENT}
# B+tree checker kinds after which a tree's entries are not all known.
_UNREADABLE = {"corrupt", "missing", "version", "record", "layout"}


@dataclass
class Problem:
    """One thing wrong: ``where`` names the snapshot, node or extent."""

    kind: str
    where: str
    what: str

    def __str__(self):
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    """What :func:`verify` found; ``ok`` when there is no problem."""

    disk: str
    problems: list[Problem] = field(default_factory=list)
    trees: int = 0              # B+trees walked (snapshots, running point, maps)
    snapshots: int = 0          # snapshot records
    nodes_checked: int = 0      # nodes read and verified
    nodes_shared: int = 0       # nodes accepted because an earlier tree verified them
    extents: int = 0            # LBA, VBA and free extents checked (each once)
    blocks: int = 0             # VBAs mapped to PBAs
    data_blocks: int = 0        # blocks read back with ``data``
    data_moved: int = 0         # of those, rewritten or freed by a writer during the check
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)   # checks skipped, and why
    # Per tree, in walk order: {"tree", "nodes_checked", "nodes_shared", "entries"}.
    per_tree: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["seconds"] = round(self.seconds, 6)
        return d


def verify(path, data: bool = False, progress=None) -> Report:
    """Verify the disk at ``path`` against its newest committed state.

    Safe beside a writer in another process: it opens the metadata read-only
    and takes no lock. ``progress(phase, done, total)`` is called as work
    advances (phase ``"trees"``, then ``"data"``). Raises a :class:`VdiskError`
    when the disk cannot be opened at all; damage is reported, not raised.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise NotFound(f"no disk at {path}")
    meta = os.path.join(path, "meta")
    if not os.path.isdir(meta):
        raise IntegrityError(f"{path} is not a vdisk disk: {meta} is missing")
    store = LmdbNodeStore(meta, readonly=True, create=False)
    try:
        return _Verifier(path, store, progress).run(data)
    finally:
        store.close()


def verify_open_disk(disk, data: bool = False, progress=None) -> Report:
    """Verify an open :class:`~vdisk.Disk` (writable or not) in this process.

    Checks its committed state, so call ``disk.flush()`` first to include
    every write. LMDB cannot open one environment twice in a process, hence
    this variant reuses the disk's own store. It takes no lock: its view is
    its own read transaction, so other threads keep reading and writing.
    """
    return _Verifier(disk.path, disk.store, progress).run(data)


# ------------------------------------------------------------------ intervals
# Half-open [start, end) runs of one address space.

def _merge(runs) -> list[tuple[int, int]]:
    """Sorted, disjoint union; touching runs are joined."""
    out: list[list[int]] = []
    for s, e in sorted(runs):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _subtract(a, b) -> list[tuple[int, int]]:
    """``a`` minus ``b``, both merged."""
    out = []
    j = 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        pos = s
        k = j
        while k < len(b) and b[k][0] < e:
            if b[k][0] > pos:
                out.append((pos, b[k][0]))
            pos = max(pos, b[k][1])
            k += 1
        if pos < e:
            out.append((pos, e))
    return out


def _intersect(a, b) -> list[tuple[int, int]]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _span(s: int, e: int) -> str:
    return f"{s}" if e - s == 1 else f"{s}-{e - 1} ({e - s} blocks)"


def tree_label(name: str) -> str:
    """How a report names a tree."""
    if name == RUNNING_TREE:
        return "running point"
    if name.startswith(SNAP_TREE_PREFIX):
        return f"snapshot {name[len(SNAP_TREE_PREFIX):]!r}"
    return {VBA_TREE: "VBA map", CSUM_TREE: "checksum map", FREE_TREE: "free map"}.get(name, f"tree {name!r}")


@dataclass
class _LbaTree:
    """What the leaves of one LBA -> VBA tree are held against."""

    name: str
    label: str
    size_blocks: int | None      # None when the size is unknown (damaged record)
    born_before: int | None      # every VBA it maps is below this
    parent_map: ExtentMap | None
    parent_label: str | None
    parent_wm: int
    is_snapshot: bool


class _Verifier:
    def __init__(self, path: str, store, progress):
        self.path = path
        self.store = store
        self.progress = progress
        self.report = Report(os.path.abspath(path))
        self.problems = self.report.problems
        self.block_size = None
        self.config = self.state = None
        self.records: dict[str, fmt.SnapshotRecord] = {}
        self.refs: list[tuple[int, int, str, int]] = []          # (vba, end, tree label, lba)
        self.mapped: list[tuple[int, int, int]] = []             # (vba, end, pba)
        self._mapped_sorted = None
        self.csum_runs: list[tuple[int, int]] = []
        self.free_runs: list[tuple[int, int]] = []
        self.rp_shared: list[tuple[str, int, int, int]] = []     # (label, lba, vba, count)
        self.lba_trees: dict[str, _LbaTree] = {}
        self.incomplete: set[str] = set()
        self.suspects: list[tuple[int, int, bytes]] = []         # (vba, pba, checksum) from --data
        self.deletion = None                                     # fmt.DeletionRecord in progress
        self.data_file_blocks: int | None = None                 # whole blocks in the data file
        self.held: list[tuple[int, int]] = []                    # VBA runs the deletion may still hold
        self._seen_overlaps: set = set()

    def problem(self, kind: str, where: str, what: str):
        self.problems.append(Problem(kind, where, what))

    def note(self, text: str):
        self.report.notes.append(text)

    def _progress(self, phase, done, total):
        if self.progress is not None:
            self.progress(phase, done, total)

    # ------------------------------------------------------------ driver

    def run(self, data: bool) -> Report:
        t0 = time.monotonic()
        with self.store.read_view():
            # A fresh forest reads counters, records and nodes inside the view
            # only, never another process's newer commit.
            try:
                self.forest = Forest(self.store, cache_nodes=CACHE_NODES)
            except struct.error:
                # Forest decodes its counters without a length check.
                raise IntegrityError("the B+tree store's counters (counter/seq, counter/node) are damaged") from None
            self._check_records()
            self._walk_trees()
            self._cross_check()
            self._check_data_file()
            if data:
                self._data_pass()
        if self.suspects:
            self._recheck_suspects()
        self.report.seconds = time.monotonic() - t0
        return self.report

    # ------------------------------------------------------------ records

    def _decode(self, where: str, decode, *args):
        """A decoded record, or None with the problem reported."""
        try:
            return decode(*args)
        except IntegrityError as e:
            self.problem("version" if isinstance(e, UnsupportedVersion) else "record", where, str(e))
        except UnicodeDecodeError:
            # vdisk.format decodes the names in records without catching this.
            self.problem("record", where, "a name in the record is not UTF-8: the record is damaged")
        return None

    def _check_records(self):
        f = self.forest
        try:
            fmt.decode_config(f.meta_get(b"disk/config"))
        except UnsupportedVersion:
            raise           # a newer disk cannot be verified by this vdisk at all
        except IntegrityError:
            pass
        self.config = self._decode("record disk/config", fmt.decode_config, f.meta_get(b"disk/config"))
        if self.config is not None:
            bs = self.config.block_size
            if bs < 512 or bs > 65536 or bs & (bs - 1):
                # decode_config does not check it; nothing sized by it can be trusted.
                self.problem("record", "record disk/config", f"block size {bs} is not a power of two from 512 "
                             f"to 65536: the record is damaged")
                self.config = None
            else:
                self.block_size = bs
        self.state = self._decode("record disk/state", fmt.decode_state, f.meta_get(b"disk/state"))
        for key, buf in f.meta_items(SNAP_META_PREFIX):
            name = key[len(SNAP_META_PREFIX):].decode(errors="replace")
            rec = self._decode(f"record disk/snap/{name}", fmt.decode_snapshot, name, buf)
            if rec is not None:
                self.records[name] = rec
        self.report.snapshots = len(self.records)
        buf = f.meta_get(DELETING_KEY)
        if buf is not None:
            self.deletion = self._decode("record disk/deleting", fmt.decode_deletion, buf)
            if self.deletion is not None:
                self.note(f"a deletion of snapshot {self.deletion.name!r} is in progress "
                          f"({len(self.deletion.node_ids)} nodes still to free)")
            elif self.problems[-1].kind == "record":
                self.problems[-1].kind = "deletion"

        names = set(f.tree_names())
        for name in _CORE_TREES:
            if name not in names:
                self.problem("record", tree_label(name), f"the tree {name!r} is missing")
                self.incomplete.add(name)
        for name in sorted(names):
            if name.startswith(SNAP_TREE_PREFIX):
                if name[len(SNAP_TREE_PREFIX):] not in self.records:
                    self.problem("snapshot", tree_label(name),
                                 f"tree {name!r} has no snapshot record (disk/snap/{name[len(SNAP_TREE_PREFIX):]})")
            elif name not in _CORE_TREES:
                self.problem("snapshot", f"tree {name!r}", "is neither a snapshot nor a map vdisk uses")
        for rec in self.records.values():
            self._check_snapshot_record(rec, names)
        self._check_state()
        for name in sorted(names):
            self._check_tree_record(name)

    def _check_snapshot_record(self, rec: fmt.SnapshotRecord, names: set):
        where = f"snapshot {rec.name!r}"
        f = self.forest
        if SNAP_TREE_PREFIX + rec.name not in names:
            self.problem("snapshot", where, f"has a record but its tree {SNAP_TREE_PREFIX + rec.name!r} is missing")
        if rec.parent is not None:
            parent = self.records.get(rec.parent)
            if parent is None:
                self.problem("snapshot", where, f"its parent {rec.parent!r} does not exist")
            else:
                if parent.seq > rec.seq:
                    self.problem("snapshot", where, f"its parent {rec.parent!r} (seq {parent.seq}) is not older "
                                 f"than it (seq {rec.seq})")
                if parent.vba_watermark > rec.vba_watermark:
                    self.problem("snapshot", where, f"its watermark {rec.vba_watermark} is below its parent "
                                 f"{rec.parent!r}'s ({parent.vba_watermark})")
        if rec.seq > f.seq:
            self.problem("counter", where, f"taken at seq {rec.seq}, but the seq counter is at {f.seq}")
        if self.state is not None and rec.vba_watermark > self.state.vba_next:
            self.problem("counter", where, f"its watermark {rec.vba_watermark} is above vba_next "
                         f"{self.state.vba_next}")
        if self.block_size and (rec.size <= 0 or rec.size % self.block_size):
            self.problem("snapshot", where, f"size {rec.size} is not a positive multiple of the block size "
                         f"{self.block_size}")

    def _check_state(self):
        s = self.state
        if s is None:
            return
        where = "running point"
        if s.vba_watermark > s.vba_next:
            self.problem("counter", where, f"watermark {s.vba_watermark} is above vba_next {s.vba_next}")
        if s.parent is not None:
            parent = self.records.get(s.parent)
            if parent is None:
                self.problem("snapshot", where, f"its parent snapshot {s.parent!r} does not exist")
            elif parent.vba_watermark > s.vba_watermark:
                self.problem("snapshot", where, f"its watermark {s.vba_watermark} is below its parent "
                             f"{s.parent!r}'s ({parent.vba_watermark})")
        if self.config is not None and (self.config.size <= 0 or self.config.size % self.config.block_size):
            self.problem("record", "record disk/config", f"disk size {self.config.size} is not a positive "
                         f"multiple of the block size {self.config.block_size}")

    def _check_tree_record(self, name: str):
        f = self.forest
        try:
            rec = f.tree(name).rec
        except IntegrityError:
            return  # check_tree reports it
        where = tree_label(name)
        snap = name.startswith(SNAP_TREE_PREFIX)
        want = _EXTENT if snap else _CORE_TREES.get(name)
        if want is not None and rec.layout != want:
            self.problem("layout", where, f"tree record has layout {rec.layout}, expected {want}")
            self.incomplete.add(name)
        if snap and not rec.frozen:
            self.problem("snapshot", where, "its tree is writable, not frozen")
        if name in _CORE_TREES and rec.frozen:
            self.problem("record", where, "the tree is frozen, so it can never change")
        if snap:
            r = self.records.get(name[len(SNAP_TREE_PREFIX):])
            if r is not None and rec.snap_seq != r.seq:
                self.problem("snapshot", where, f"its tree was taken at seq {rec.snap_seq}, the record says {r.seq}")
        if max(rec.snap_seq, rec.created_seq) > f.seq:
            self.problem("counter", where, f"tree record names seq {max(rec.snap_seq, rec.created_seq)}, but the "
                         f"seq counter is at {f.seq}")

    # ------------------------------------------------------------ trees

    def _tree_order(self) -> list[str]:
        """Snapshots oldest first (parents before children), then the rest."""
        f = self.forest
        names = set(f.tree_names())
        # Two snapshots taken with no change between have the same seq, so
        # seq alone does not put a parent first.
        by_age = sorted(self.records.values(), key=lambda r: (r.seq, r.created_ns, r.name))
        snaps: list[str] = []
        placed: set[str] = set()
        for rec in by_age:
            chain = []
            while rec is not None and rec.name not in placed:
                placed.add(rec.name)
                chain.append(rec.name)
                rec = self.records.get(rec.parent) if rec.parent else None
            snaps.extend(reversed(chain))
        order = [SNAP_TREE_PREFIX + n for n in snaps if SNAP_TREE_PREFIX + n in names]
        order += sorted(n for n in names if n not in order and n not in _CORE_TREES)
        order += [n for n in _CORE_TREES if n in names]
        return order

    def _lba_context(self, name: str) -> _LbaTree | None:
        if name in self.incomplete:
            return None
        bs = self.block_size
        state = self.state
        if name == RUNNING_TREE:
            rec = None
            size = self.config.size if self.config else None
            born = state.vba_next if state else None
            parent_name = state.parent if state else None
        else:
            rec = self.records.get(name[len(SNAP_TREE_PREFIX):])
            size = rec.size if rec else None
            born = rec.vba_watermark if rec else None
            parent_name = rec.parent if rec else None
        parent = self.records.get(parent_name) if parent_name else None
        parent_map = None
        parent_tree = SNAP_TREE_PREFIX + parent_name if parent else None
        if parent is not None and parent_tree in self.lba_trees and parent_tree not in self.incomplete:
            parent_map = ExtentMap(self.forest.tree(parent_tree))
        return _LbaTree(name, tree_label(name), size // bs if size is not None and bs else None, born,
                        parent_map, tree_label(parent_tree) if parent else None,
                        parent.vba_watermark if parent else 0, rec is not None)

    def _walk_trees(self):
        f = self.forest
        order = self._tree_order()
        known: dict = {}
        results = []
        for i, name in enumerate(order):
            self._progress("trees", i, len(order))
            ctx = None
            if name == RUNNING_TREE or name.startswith(SNAP_TREE_PREFIX):
                ctx = self._lba_context(name)
                if ctx is not None:
                    self.lba_trees[name] = ctx
                visit = self._lba_visitor(ctx)
            elif name in self.incomplete:
                visit = self._node_visitor(None)
            elif name == VBA_TREE:
                visit = self._vba_visitor()
            elif name == CSUM_TREE:
                visit = self._csum_visitor()
            elif name == FREE_TREE:
                visit = self._free_visitor()
            else:
                visit = self._node_visitor(None)
            r = check_tree(f, name, known, visit=visit)
            results.append(r)
            if any(p.kind in _UNREADABLE for p in r.problems):
                self.incomplete.add(name)
            self.report.nodes_checked += r.nodes_checked
            self.report.nodes_shared += r.nodes_shared
            self.report.per_tree.append({"tree": tree_label(name), "nodes_checked": r.nodes_checked,
                                         "nodes_shared": r.nodes_shared, "entries": r.entries})
            self._add_tree_problems(r.problems)
            if ctx is not None:
                self._check_last_extent(ctx)
        self._progress("trees", len(order), len(order))
        self.report.trees = len(results)
        seen = [len(r.problems) for r in results]
        check_sharing(f, results, known)
        for r, n in zip(results, seen):
            self._add_tree_problems(r.problems[n:])
        deleting = self._check_deletion(results)
        self._check_nodes_stored(results, deleting)

    def _check_deletion(self, results) -> set[int]:
        """The nodes a deletion in progress still owns; gathers the VBAs they map."""
        rec = self.deletion
        if rec is None:
            return set()
        f = self.forest
        where = f"deletion of snapshot {rec.name!r}"
        reached_by = {}
        for r in results:
            for i in r.reached:
                reached_by.setdefault(i, r.tree)
        ids = set(rec.node_ids)
        for node_id in rec.node_ids:
            if node_id in reached_by:
                self.problem("deletion", f"{where} node {node_id}", f"is listed for freeing but "
                             f"{tree_label(reached_by[node_id])} still reaches it: freeing it would break that tree")
                continue
            try:
                node = f.node(node_id)
            except IntegrityError as e:
                self.problem("deletion", f"{where} node {node_id}", f"cannot be read: {e}")
                self.incomplete.add(DELETING_KEY.decode())   # the VBAs it holds are not all known
                continue
            self.report.nodes_checked += 1
            if node.leaf and node.layout == _EXTENT:
                for packed in node.vals:
                    v, n = packed >> LEN_BITS, packed & MAX_LEN
                    self.held.append((v, v + n))
        return ids

    def _add_tree_problems(self, problems):
        for p in problems:
            where = tree_label(p.tree)
            if p.node_id is not None:
                where += f" node {p.node_id}"
                if len(p.path) > 1:
                    where += " (path " + "/".join(str(x) for x in p.path) + ")"
            self.problem(p.kind, where, p.message)

    def _check_nodes_stored(self, results, deleting: set[int]):
        """Stored nodes that no tree reaches; nodes in use beyond the node counter."""
        f = self.forest
        reached = set(deleting)
        for r in results:
            reached |= r.reached
        limit = f.next_node_id
        beyond = sorted(i for i in reached if i >= limit)
        for i in beyond[:20]:
            self.problem("counter", f"node {i}", f"is in use but the node counter is at {limit}: a new node "
                         f"would overwrite it")
        if self.incomplete & set(r.tree for r in results):
            # Nodes below an unreadable one are unreached but not leaked.
            self.note("stored nodes no tree reaches: not checked, some tree nodes could not be read")
            return
        # node_ids() may list a newer commit than the view; ids at or above the
        # view's counter were born after it and are not this view's business.
        stored = [i for i in self.store.node_ids() if i < limit]
        runs = _merge((i, i + 1) for i in stored if i not in reached)
        for s, e in runs:
            self.problem("leak", f"node store nodes {s}" + (f"-{e - 1}" if e - s > 1 else ""),
                         f"{e - s} stored node{'s' if e - s > 1 else ''} that no tree reaches")

    def _node_visitor(self, then):
        seq = self.forest.seq

        def visit(tree, node, lo, hi):
            if node.seq > seq:
                self.problem("counter", f"{tree_label(tree.name)} node {node.id}",
                             f"seq {node.seq} is above the seq counter {seq}")
            if then is not None and node.leaf:
                then(tree, node)
        return visit

    def _lba_visitor(self, ctx: _LbaTree | None):
        if ctx is None:
            return self._node_visitor(None)
        state = self.state
        rp_wm = state.vba_watermark if state is not None else None

        def leaf(tree, node):
            label = ctx.label
            keys, vals = node.keys, node.vals
            self.report.extents += len(keys)
            size, born, parent_map, parent_wm = ctx.size_blocks, ctx.born_before, ctx.parent_map, ctx.parent_wm
            refs = self.refs
            prev_end = None
            prev_key = None
            clipped = []
            for k, packed in zip(keys, vals):
                v, n = packed >> LEN_BITS, packed & MAX_LEN
                refs.append((v, v + n, label, k))
                if parent_map is not None and v < parent_wm:
                    clipped.append((k, v, min(n, parent_wm - v)))
                if ctx.is_snapshot and rp_wm is not None and v + n > rp_wm:
                    head = max(0, rp_wm - v)
                    self.rp_shared.append((label, k + head, v + head, n - head))
                # Everything below is rare: the message is built only for a problem.
                if (n == 0 or v == 0 or (prev_end is not None and k < prev_end)
                        or (size is not None and k + n > size) or (born is not None and v + n > born)):
                    self._lba_extent_problems(ctx, node, k, v, n, prev_end, prev_key)
                prev_end, prev_key = k + n, k
            if clipped:
                self._check_parent_holds(ctx, node, clipped)
            if keys:
                self._check_neighbours(ctx, tree, keys, vals)

        return self._node_visitor(leaf)

    def _lba_extent_problems(self, ctx: _LbaTree, node, k, v, n, prev_end, prev_key):
        where = f"{ctx.label} LBA {_span(k, k + max(n, 1))}"
        if n == 0:
            self.problem("extent", where, f"empty extent (VBA {v}, length 0) in node {node.id}")
            return
        if prev_end is not None and k < prev_end:
            self.problem("extent", where, f"overlaps the extent at LBA {prev_key} in node {node.id}")
        if ctx.size_blocks is not None and k + n > ctx.size_blocks:
            self.problem("extent", where, f"ends past the disk size ({ctx.size_blocks} blocks) in node {node.id}")
        if v == 0:
            self.problem("extent", where, "maps VBA 0, which is never handed out")
        if ctx.born_before is not None and v + n > ctx.born_before:
            if ctx.is_snapshot:
                self.problem("ownership", where, f"maps VBA {_span(v, v + n)}, born after the snapshot was "
                             f"taken (its watermark is {ctx.born_before})")
            else:
                self.problem("counter", where, f"maps VBA {_span(v, v + n)}, not below vba_next {ctx.born_before}")

    def _check_parent_holds(self, ctx: _LbaTree, node, runs):
        """VBAs below the parent's watermark were born before it: it maps them too."""
        lo = runs[0][0]
        hi = max(k + m for k, _v, m in runs)
        try:
            pieces = ctx.parent_map.pieces(lo, hi - lo)
        except VdiskError:
            ctx.parent_map = None
            self.note(f"{ctx.label}: not compared with its parent, whose tree cannot be read")
            return
        starts = [s for s, _t, _n in pieces]
        for k, v, m in runs:
            pos = k
            i = max(0, bisect.bisect_right(starts, k) - 1)
            missing = []
            while i < len(pieces) and pieces[i][0] < k + m:
                s, t, c = pieces[i]
                a, b = max(s, k), min(s + c, k + m)
                if a < b and t + (a - s) == v + (a - k):
                    if a > pos:
                        missing.append((pos, a))
                    pos = max(pos, b)
                i += 1
            if pos < k + m:
                missing.append((pos, k + m))
            for a, b in missing:
                self.problem("ownership", f"{ctx.label} LBA {_span(a, b)}",
                             f"maps VBA {_span(v + a - k, v + b - k)}, born before its parent {ctx.parent_label} "
                             f"(watermark {ctx.parent_wm}), which does not map it so: deleting the parent "
                             f"would free it")

    def _check_neighbours(self, ctx: _LbaTree, tree, keys, vals):
        """Extents of this leaf against the ones just outside it in the same tree."""
        try:
            first = keys[0]
            prev = tree.floor(first - 1) if first > 0 else None
            if prev is not None and prev[0] + (prev[1] & MAX_LEN) > first:
                self._overlap(ctx, prev[0], first)
            last, packed = keys[-1], vals[-1]
            nxt = next(tree.items(last + 1), None)
            if nxt is not None and last + (packed & MAX_LEN) > nxt[0]:
                self._overlap(ctx, last, nxt[0])
        except VdiskError:
            pass  # the unreadable node is reported by the walk

    def _overlap(self, ctx, a, b):
        key = (ctx.name, a, b)
        if key in self._seen_overlaps:
            return
        self._seen_overlaps.add(key)
        self.problem("extent", f"{ctx.label} LBA {a}", f"extent overlaps the next one, at LBA {b}")

    def _check_last_extent(self, ctx: _LbaTree):
        """A subtree accepted from an older tree was held against that tree's size."""
        if ctx.size_blocks is None or ctx.name in self.incomplete:
            return
        try:
            last = self.forest.tree(ctx.name).floor_any()
        except VdiskError:
            return
        if last is not None and last[0] + (last[1] & MAX_LEN) > ctx.size_blocks:
            self.problem("extent", f"{ctx.label} LBA {last[0]}",
                         f"ends past the disk size ({ctx.size_blocks} blocks)")

    def _vba_visitor(self):
        state = self.state
        vba_next = state.vba_next if state is not None else None
        pba_end = state.pba_end if state is not None else None
        prev_end = [0]
        mapped = self.mapped

        def leaf(tree, node):
            self.report.extents += len(node.keys)
            for v, packed in zip(node.keys, node.vals):
                p, n = packed >> LEN_BITS, packed & MAX_LEN
                if n == 0 or v < prev_end[0] or (state is not None and (v + n > vba_next or p + n > pba_end)):
                    self._vba_extent_problems(node, v, p, n, prev_end[0])
                    if n == 0:
                        continue
                prev_end[0] = v + n
                mapped.append((v, v + n, p))
        return self._node_visitor(leaf)

    def _vba_extent_problems(self, node, v, p, n, prev_end):
        where = f"VBA {_span(v, v + max(n, 1))}"
        state = self.state
        if n == 0:
            self.problem("extent", where, f"empty VBA -> PBA extent (PBA {p}) in node {node.id}")
            return
        if v < prev_end:
            self.problem("extent", where, f"overlaps the VBA extent ending at {prev_end - 1} in node {node.id}")
        if state is not None:
            if v + n > state.vba_next:
                self.problem("counter", where, f"is mapped but not below vba_next {state.vba_next}")
            if p + n > state.pba_end:
                self.problem("alloc", where, f"maps PBA {_span(p, p + n)}, past the end of the PBA space "
                             f"({state.pba_end} blocks)")

    def _csum_visitor(self):
        runs = self.csum_runs

        def leaf(tree, node):
            keys = node.keys
            if not keys:
                return
            if keys[-1] - keys[0] == len(keys) - 1:
                spans = [(keys[0], keys[-1] + 1)]     # one contiguous run: the common case
            else:
                spans = []
                start = prev = keys[0]
                for k in keys[1:]:
                    if k != prev + 1:
                        spans.append((start, prev + 1))
                        start = k
                    prev = k
                spans.append((start, prev + 1))
            if runs and spans[0][0] == runs[-1][1]:
                runs[-1] = (runs[-1][0], spans[0][1])
                spans = spans[1:]
            runs.extend(spans)
        return self._node_visitor(leaf)

    def _free_visitor(self):
        state = self.state
        prev = [None]

        def leaf(tree, node):
            self.report.extents += len(node.keys)
            for p, n in zip(node.keys, node.vals):
                where = f"free PBA {_span(p, p + max(n, 1))}"
                if n == 0:
                    self.problem("alloc", where, f"empty free extent in node {node.id}")
                    continue
                if prev[0] is not None and p < prev[0][1]:
                    self.problem("alloc", where, f"overlaps the free extent at PBA {prev[0][0]}: freed twice")
                prev[0] = (p, p + n)
                if state is not None and p + n > state.pba_end:
                    self.problem("alloc", where, f"is past the end of the PBA space ({state.pba_end} blocks)")
                self.free_runs.append((p, p + n))
        return self._node_visitor(leaf)

    # ------------------------------------------------------------ cross-checks

    def _cross_check(self):
        lba_names = set(self.lba_trees) | {n for n in self.forest.tree_names()
                                           if n == RUNNING_TREE or n.startswith(SNAP_TREE_PREFIX)}
        lba_complete = (not (lba_names & self.incomplete) and RUNNING_TREE in lba_names
                        and DELETING_KEY.decode() not in self.incomplete)
        vba_complete = VBA_TREE not in self.incomplete
        csum_complete = CSUM_TREE not in self.incomplete
        free_complete = FREE_TREE not in self.incomplete and self.state is not None
        referenced = _merge((v, e) for v, e, _l, _k in self.refs)
        mapped = _merge((v, e) for v, e, _p in self.mapped)
        self.report.blocks = sum(e - s for s, e in mapped)

        if vba_complete:
            self._report_unmapped(_subtract(referenced, mapped))
        else:
            self.note("VBAs without a PBA: not checked, the VBA map cannot be read whole")
        if lba_complete:
            # VBAs a deletion in progress has not swept yet are its own, not leaked.
            held = _merge(self.held) if self.held else []
            for s, e in _subtract(_subtract(mapped, referenced), held):
                self.problem("vba-leak", f"VBA {_span(s, e)}", f"mapped to {self._pbas_of(s, e)} but no snapshot "
                             f"or running point maps it: the space is never freed")
        else:
            self.note("leaked VBAs: not checked, some LBA tree cannot be read whole")
        if vba_complete and csum_complete:
            csums = _merge(self.csum_runs)
            for s, e in _subtract(mapped, csums):
                self.problem("csum", f"VBA {_span(s, e)}", "is mapped but has no checksum: reads of it fail")
            for s, e in _subtract(csums, mapped):
                self.problem("csum", f"VBA {_span(s, e)}", "has a checksum but no VBA -> PBA entry")
        if vba_complete:
            self._check_pbas(free_complete)
        self._check_running_point_ownership()

    def _pbas_of(self, s: int, e: int) -> str:
        out = []
        i = bisect.bisect_right(self.mapped_sorted, (s, float("inf"))) - 1
        i = max(i, 0)
        while i < len(self.mapped_sorted) and self.mapped_sorted[i][0] < e and len(out) < 3:
            v, ve, p = self.mapped_sorted[i]
            a, b = max(v, s), min(ve, e)
            if a < b:
                out.append(f"PBA {_span(p + a - v, p + b - v)}")
            i += 1
        return ", ".join(out) or "?"

    @property
    def mapped_sorted(self):
        if self._mapped_sorted is None:
            self._mapped_sorted = sorted(self.mapped)
        return self._mapped_sorted

    def _report_unmapped(self, holes):
        """One problem per tree extent that maps a VBA without a PBA."""
        if not holes:
            return
        refs = sorted(self.refs)
        starts = [r[0] for r in refs]
        for s, e in holes:
            # No extent is longer than MAX_LEN, so none starting earlier reaches in.
            i = bisect.bisect_left(starts, s - MAX_LEN)
            while i < len(refs) and refs[i][0] < e:
                v, ve, label, lba = refs[i]
                a, b = max(v, s), min(ve, e)
                if a < b:
                    self.problem("unmapped", f"{label} LBA {_span(lba + a - v, lba + b - v)}",
                                 f"maps VBA {_span(a, b)}, which has no VBA -> PBA entry: reads of it fail")
                i += 1

    def _check_pbas(self, free_complete: bool):
        state = self.state
        by_pba = sorted((p, p + (e - v), v) for v, e, p in self.mapped)
        reach_end, reach_p, reach_vba = -1, 0, None
        for p, pe, v in by_pba:
            if p < reach_end:
                a, b = p, min(pe, reach_end)
                self.problem("pba-double", f"PBA {_span(a, b)}", f"is mapped by VBA {_span(v, v + b - a)} and by "
                             f"VBA {_span(reach_vba + a - reach_p, reach_vba + b - reach_p)}: a write to one "
                             f"changes the other")
            if pe > reach_end:
                reach_end, reach_p, reach_vba = pe, p, v
        if not free_complete:
            self.note("PBAs both mapped and free, and allocator totals: not checked, the free map or the "
                      "running point record cannot be read")
            return
        used = _merge((p, pe) for p, pe, _v in by_pba)
        free = _merge(self.free_runs)
        for s, e in _intersect(used, free):
            self.problem("pba-free", f"PBA {_span(s, e)}", "is mapped and also free: the allocator will "
                         "hand it out again and overwrite live data")
        space = [(0, state.pba_end)] if state.pba_end else []
        lost = _subtract(space, _merge(used + free))
        n_used = sum(e - s for s, e in used)
        n_free = sum(e - s for s, e in free)
        if lost:
            n_lost = sum(e - s for s, e in lost)
            self.problem("alloc", "PBA space", f"mapped {n_used} + free {n_free} blocks do not cover the PBA space "
                         f"of {state.pba_end} blocks: {n_lost} blocks are neither mapped nor free (lost), first "
                         f"at PBA {_span(*lost[0])}")
        past = _subtract(_merge(used + free), space)
        if past and not any(p.kind == "alloc" and "past the end" in p.what for p in self.problems):
            self.problem("alloc", "PBA space", f"{sum(e - s for s, e in past)} blocks lie past pba_end "
                         f"{state.pba_end}")

    def _check_running_point_ownership(self):
        """A snapshot must not map a VBA the running point maps at or above its watermark."""
        if not self.rp_shared or RUNNING_TREE in self.incomplete or RUNNING_TREE not in self.lba_trees:
            return
        rp = ExtentMap(self.forest.tree(RUNNING_TREE))
        wm = self.state.vba_watermark
        for label, lba, vba, n in self.rp_shared:
            try:
                pieces = rp.pieces(lba, n)
            except VdiskError:
                return
            for s, t, c in pieces:
                if t == vba + (s - lba):
                    self.problem("ownership", f"{label} LBA {_span(s, s + c)}",
                                 f"maps VBA {_span(t, t + c)}, which the running point maps too at or above its "
                                 f"watermark {wm}: a write there would change the snapshot")

    # ------------------------------------------------------------ data

    def _check_data_file(self):
        found, self.data_file_blocks = check_data_file(os.path.join(self.path, "data"), self.block_size,
                                                       self.mapped)
        for kind, where, what in found:
            self.problem(kind, where, what)
        if VBA_TREE in self.incomplete:
            self.note("data file size: held against the readable part of the VBA map only")

    def _data_pass(self):
        if self.block_size is None or VBA_TREE in self.incomplete or CSUM_TREE in self.incomplete:
            self.note("data blocks: not checked, the configuration, VBA map or checksum map cannot be read")
            return
        if self.data_file_blocks is None:
            self.note("data blocks: not checked, the data file cannot be read")
            return
        bs = self.block_size
        csum = self.forest.tree(CSUM_TREE)
        total = self.report.blocks
        done = 0
        data_path = os.path.join(self.path, "data")
        try:
            fd = os.open(data_path, os.O_RDONLY)
        except OSError as e:
            self.problem("data", "data file", f"cannot be opened: {e.strerror}")
            return
        try:
            buf = bytearray(DATA_CHUNK_BLOCKS * bs)
            view = memoryview(buf)
            for v0, ve, p0 in self.mapped_sorted:
                # Blocks past the end of the file are one data-file problem, not one each.
                ve = min(ve, v0 + max(0, self.data_file_blocks - p0))
                for v in range(v0, ve, DATA_CHUNK_BLOCKS):
                    n = min(DATA_CHUNK_BLOCKS, ve - v)
                    p = p0 + (v - v0)
                    got = os.preadv(fd, [view[:n * bs]], p * bs)
                    sums = dict(csum.items(v, v + n))
                    for i in range(n):
                        want = sums.get(v + i)
                        if want is None:
                            continue  # reported by the metadata checks
                        if (i + 1) * bs > got or checksum(view[i * bs:(i + 1) * bs]) != want:
                            self.suspects.append((v + i, p + i, want))
                    done += n
                    self.report.data_blocks += n
                    self._progress("data", done, total)
        finally:
            os.close(fd)

    def _lookup(self, vba: int):
        """(pba, checksum) of one VBA in a fresh committed view, or None."""
        with self.store.read_view():
            f = Forest(self.store, cache_nodes=64)
            pieces = ExtentMap(f.tree(VBA_TREE)).pieces(vba, 1)
            want = f.tree(CSUM_TREE).get(vba)
        if not pieces or want is None:
            return None
        return pieces[0][1], want

    def _read_block(self, fd: int, pba: int) -> bytes:
        return os.pread(fd, self.block_size, pba * self.block_size)

    def _recheck_suspects(self):
        """Tell damaged blocks from ones a writer moved after the view was taken."""
        bs = self.block_size
        fd = os.open(os.path.join(self.path, "data"), os.O_RDONLY)
        try:
            for vba, pba, want in self.suspects:
                for _attempt in range(RECHECK_ATTEMPTS):
                    try:
                        before = self._lookup(vba)
                    except VdiskError:
                        before = None
                    if before is None:
                        self.report.data_moved += 1     # no longer live: trimmed or deleted meanwhile
                        break
                    block = self._read_block(fd, before[0])
                    if len(block) == bs and checksum(block) == before[1]:
                        self.report.data_moved += (before[0], before[1]) != (pba, want)
                        break
                    try:
                        after = self._lookup(vba)
                    except VdiskError:
                        after = None
                    if after == before:
                        self.problem("data", self._where_vba(vba, before[0]),
                                     "short read: the data file ends before it" if len(block) < bs
                                     else "data does not match its checksum: the block is damaged")
                        break
                else:
                    self.note(f"VBA {vba}: moved by a writer on every attempt, not verified")
        finally:
            os.close(fd)

    def _where_vba(self, vba: int, pba: int) -> str:
        names = []
        for v, e, label, lba in self.refs:
            if v <= vba < e:
                names.append(f"{label} LBA {lba + vba - v}")
                if len(names) == 3:
                    break
        return f"VBA {vba} (PBA {pba}" + (", " + ", ".join(names) if names else "") + ")"
