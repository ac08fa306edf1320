"""The blocks that differ between two snapshots (or a snapshot and the running point).

Each snapshot and the running point is an LBA -> VBA tree, and trees that
descend from one another share every node neither has changed since
(the seq rule). :func:`vdisk.btree.diff.diff_trees` walks two such trees
together and skips every subtree both reach, so what is read - and what
this costs - follows the change, not the size of the disk. The entries
left on each side are then compared LBA by LBA: a block differs when the
two trees map it to different VBAs, or one maps it and the other does not.

Why a VBA comparison is exact: a VBA is born once and never reused, and a
VBA a snapshot maps never changes its data (a rewrite at the running point
keeps a VBA only when it was born after the newest snapshot, which no
snapshot maps). So two trees mapping a block to the same VBA hold the same
bytes there; different VBAs mean the block was written (or trimmed) on the
way from one to the other. That makes the result a property of the
committed metadata itself: exact after any crash, with no bitmap to lose.

Guarantees of :func:`diff` and :func:`changed_extents`:

* every block whose contents differ between FROM and TO is in a reported
  range (a block rewritten with the bytes it held is reported too: its
  VBA changed);
* every reported block maps differently in the two (no false positives at
  the metadata level);
* ``data`` is True where TO maps the range (read its bytes from TO) and
  False where TO has a hole there (it reads as zeros);
* ranges are in offset order, do not overlap, lie inside TO's size, and
  neighbours of the same kind are joined;
* the whole result comes from one consistent view (the disk's lock, or for
  a read-only opener one pinned committed state).

FROM may be any snapshot, older or newer than TO, or :data:`EVERYTHING`
(``"-"``): then every range TO maps is reported as data. None names the
running point. The trees need not be related; unrelated trees simply
share nothing, and the walk reads both whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from vdisk.btree.diff import diff_trees
from vdisk.extents import LEN_BITS, MAX_LEN
from vdisk.names import RUNNING_TREE, SNAP_TREE_PREFIX, check_snapshot_lookup

# FROM that stands for an empty disk: every allocated range of TO differs.
EVERYTHING = "-"


class Change(NamedTuple):
    """One range that differs: byte offset, byte length, and whether TO holds data there."""

    offset: int
    length: int
    data: bool


@dataclass
class Diff:
    """What :func:`diff` found, with what the walk cost."""

    changes: list[Change] = field(default_factory=list)
    block_size: int = 0
    from_size: int = 0          # bytes; 0 for EVERYTHING
    to_size: int = 0
    nodes_read: int = 0
    shared_skipped: int = 0

    @property
    def data_bytes(self) -> int:
        return sum(c.length for c in self.changes if c.data)

    @property
    def hole_bytes(self) -> int:
        return sum(c.length for c in self.changes if not c.data)


def _tree(disk, name):
    """(tree, size) of snapshot ``name``, or of the running point for None."""
    forest = disk.forest
    if name is None:
        return forest.tree(RUNNING_TREE), disk.size
    check_snapshot_lookup(name)
    rec = disk.snapshot_record(name)
    return forest.tree(SNAP_TREE_PREFIX + name), rec.size


def diff(disk, from_name: str | None, to_name: str | None = None) -> Diff:
    """The ranges that differ from ``from_name`` to ``to_name`` (see the module docstring).

    ``disk`` is a :class:`vdisk.Disk` (writable or read-only). Raises
    NotFound for a snapshot that does not exist.
    """
    with disk.view():
        bs = disk.block_size
        tree_b, size_b = _tree(disk, to_name)
        if from_name == EVERYTHING:
            tree_a, size_a = None, 0
        else:
            tree_a, size_a = _tree(disk, from_name)
        walk = diff_trees(tree_a, tree_b)
    out = Diff(block_size=bs, from_size=size_a, to_size=size_b, nodes_read=walk.nodes_read,
               shared_skipped=walk.shared_skipped)
    end = size_b // bs
    a, b = _without_common(walk.a, walk.b)
    for start, stop, data in _differing(_extents(a), _extents(b)):
        stop = min(stop, end)
        if start >= stop:
            continue
        prev = out.changes[-1] if out.changes else None
        if prev is not None and prev.data == data and prev.offset + prev.length == start * bs:
            out.changes[-1] = Change(prev.offset, prev.length + (stop - start) * bs, data)
        else:
            out.changes.append(Change(start * bs, (stop - start) * bs, data))
    return out


def changed_extents(disk, from_name: str | None, to_name: str | None = None) -> Iterator[Change]:
    """``(offset, length, data)`` of each range that differs; see :func:`diff`."""
    return iter(diff(disk, from_name, to_name).changes)


def _without_common(a: list, b: list) -> tuple[list, list]:
    """Both key-ordered entry lists without the entries they have in common.

    The leaves a small change rewrote hold mostly the entries they held
    before; an entry equal on both sides (same first LBA, VBA and length)
    maps the same blocks in both, so it is dropped before the sweep.
    """
    if not a or not b:
        return a, b
    out_a, out_b = [], []
    i = j = 0
    na, nb = len(a), len(b)
    while i < na and j < nb:
        ka, kb = a[i][0], b[j][0]
        if ka == kb:
            if a[i][1] != b[j][1]:
                out_a.append(a[i])
                out_b.append(b[j])
            i += 1
            j += 1
        elif ka < kb:
            out_a.append(a[i])
            i += 1
        else:
            out_b.append(b[j])
            j += 1
    out_a.extend(a[i:])
    out_b.extend(b[j:])
    return out_a, out_b


def _extents(entries) -> list[tuple[int, int, int]]:
    """Tree entries as ``(first LBA, end LBA, VBA of the first)``."""
    out = []
    for lba, packed in entries:
        n = packed & MAX_LEN
        out.append((lba, lba + n, packed >> LEN_BITS))
    return out


def _differing(a: list, b: list):
    """``(start, end, b maps it)`` of the LBA runs where extent lists ``a`` and ``b`` map differently.

    Each list is sorted and its extents do not overlap; a block is mapped
    to ``vba + (lba - first)`` by the extent holding it, or unmapped.
    """
    points = sorted({p for e in a for p in e[:2]} | {p for e in b for p in e[:2]})
    i = j = 0
    for start, stop in zip(points, points[1:]):
        while i < len(a) and a[i][1] <= start:
            i += 1
        while j < len(b) and b[j][1] <= start:
            j += 1
        va = a[i][2] + start - a[i][0] if i < len(a) and a[i][0] <= start else None
        vb = b[j][2] + start - b[j][0] if j < len(b) and b[j][0] <= start else None
        if va != vb:
            yield start, stop, vb is not None
