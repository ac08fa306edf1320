"""Snapshot deletion by sorted VBA sweep (design notes, 2).

1. Find the VBAs that only the snapshot maps (:mod:`.usage`): its entries
   outside the subtrees its children share, above its parent's watermark, and
   mapped by no other tree that could hold them.
2. Buffer them, sort by VBA, and remove the VBA -> PBA and checksum entries in
   one ascending pass, so the shared VBA tree is swept in order instead of
   edited at random; the PBAs go back to the allocator.
3. Free the tree nodes only the snapshot reached, re-parent its children, and
   commit everything in one transaction: a crash leaves either the snapshot
   whole or gone, and no space leaks either way.
"""

from __future__ import annotations

from vdisk import format as fmt
from vdisk.errors import InvalidArgument

from .usage import exclusive_runs


def delete_snapshot(disk, name: str) -> int:
    """Delete snapshot ``name``; returns the number of blocks freed."""
    from vdisk.disk import RUNNING_TREE, SNAP_META_PREFIX, SNAP_TREE_PREFIX
    forest = disk.forest
    recs = {r.name: r for r in disk._snapshot_records()}
    rec = recs[name]
    children = [r for r in recs.values() if r.parent == name]
    holders = len(children) + (disk.state.parent == name)
    if holders >= 2:
        # The running point would then own alone some blocks and nodes still
        # marked shared, and leak them when it rewrites them (ZFS refuses the
        # same case: a snapshot with dependent clones).
        raise InvalidArgument(
            f"snapshot {name!r} is the base of {holders} others ("
            f"{', '.join(sorted(c.name for c in children) + (['the running point'] if disk.state.parent == name else []))}"
            f", after a revert); delete all but one of them first")
    runs, nodes = exclusive_runs(disk, name)
    runs.sort()
    for vba, count in runs:
        disk._forget_vbas(vba, count)
    forest.free_node_ids(nodes)
    forest.drop_tree(SNAP_TREE_PREFIX + name)
    forest.meta_put(SNAP_META_PREFIX + name.encode(), None)
    for child in children:
        child.parent = rec.parent
        forest.meta_put(SNAP_META_PREFIX + child.name.encode(), fmt.encode_snapshot(child))
    if disk.state.parent == name:
        # The running point is the only dependent (others are refused above):
        # what it shared with the deleted snapshot is now its own.
        disk.state.parent = rec.parent
        parent = recs.get(rec.parent) if rec.parent else None
        disk.state.vba_watermark = parent.vba_watermark if parent else 1
        forest.tree(RUNNING_TREE).release_snapshot_seq(parent.seq if parent else 0)
    disk._commit()
    return sum(n for _, n in runs)
