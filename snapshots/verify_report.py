"""What ``vdisk verify`` reports: problem kinds, :class:`Report`, its JSON.

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
log           a redo log group cannot be read, or its records do not parse
              or name blocks outside the disk (flushes in the log and not
              yet in the maps are no problem: ``log_flushes``)
============  ================================================================

``vdisk verify --json`` prints :meth:`Report.to_dict`; its schema is in
``docs/CLI.md``, so a field added here is a documented change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vdisk.names import CSUM_TREE, FREE_TREE, RUNNING_TREE, SNAP_TREE_PREFIX, VBA_TREE


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
    """What :func:`~vdisk.snapshots.verify.verify` found; ``ok`` when there is no problem."""

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
    # The redo log (vdisk/journal.py): flushes durable in it but not yet in the
    # committed maps checked here; a writable open replays them.
    log_flushes: int = 0
    log_groups: int = 0         # their groups (blocks)
    log_dropped_groups: int = 0  # groups of a last flush that never completed: replay drops them
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


def tree_label(name: str) -> str:
    """How a report names a tree."""
    if name == RUNNING_TREE:
        return "running point"
    if name.startswith(SNAP_TREE_PREFIX):
        return f"snapshot {name[len(SNAP_TREE_PREFIX):]!r}"
    return {VBA_TREE: "VBA map", CSUM_TREE: "checksum map", FREE_TREE: "free map"}.get(name, f"tree {name!r}")
