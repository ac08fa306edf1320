"""Phase 3 of ``vdisk verify``: the maps held against each other.

The walk gathered each map as runs (:mod:`.verify_state`); here they are
compared as sorted run lists (:mod:`.verify_runs`): every VBA a tree maps has
a PBA and a checksum; every VBA -> PBA entry is mapped by some tree (else it
leaks); checksums exist only for mapped VBAs; no PBA is mapped twice or both
mapped and free, and mapped plus free make exactly the PBA space; no
snapshot maps a VBA that the running point maps at or above its watermark
(the running point would rewrite it in place); every stored node is reached
by some tree. A snapshot deletion in progress (record ``disk/deleting``, see
:mod:`.delete`) owns the nodes it lists and may still hold the VBAs their
leaves map: those are neither leaks nor missing, but its nodes must still be
stored and no live tree may reach them (they are freed when it ends).

A check whose inputs a damaged tree left incomplete is skipped with a note,
since comparing against part of a map would report false leaks.
"""

from __future__ import annotations

import bisect
from itertools import accumulate, repeat
from operator import add, and_, itemgetter, lt, rshift

from vdisk.names import ANCHOR_TREE, CSUM_TREE, FREE_TREE, RUNNING_TREE, SNAP_TREE_PREFIX, VBA_TREE
from vdisk.errors import IntegrityError, VdiskError
from vdisk.extents import LEN_BITS, MAX_LEN, ExtentMap

from .verify_report import tree_label
from .verify_runs import intersect, merge, merge_sorted, span, subtract
from .verify_state import DELETING_KEY, EXTENT


# ------------------------------------------------------------------ nodes

def check_deletion(v, results) -> set[int]:
    """The nodes a deletion in progress still owns; gathers the VBAs they map."""
    rec = v.deletion
    if rec is None:
        return set()
    f = v.forest
    where = f"deletion of snapshot {rec.name!r}"
    reached_by = {}
    for r in results:
        for i in r.reached:
            reached_by.setdefault(i, r.tree)
    ids = set(rec.node_ids)
    for node_id in rec.node_ids:
        if node_id in reached_by:
            v.problem("deletion", f"{where} node {node_id}", f"is listed for freeing but "
                      f"{tree_label(reached_by[node_id])} still reaches it: freeing it would break that tree")
            continue
        try:
            node = f.node(node_id)
        except IntegrityError as e:
            v.problem("deletion", f"{where} node {node_id}", f"cannot be read: {e}")
            v.incomplete.add(DELETING_KEY.decode())   # the VBAs it holds are not all known
            continue
        v.report.nodes_checked += 1
        if node.leaf and node.layout == EXTENT:
            for packed in node.vals:
                vba, n = packed >> LEN_BITS, packed & MAX_LEN
                v.held.append((vba, vba + n))
    return ids


def check_nodes_stored(v, results, deleting: set[int]):
    """Stored nodes that no tree reaches; nodes in use beyond the node counter."""
    f = v.forest
    reached = set(deleting)
    for r in results:
        reached |= r.reached
    limit = f.next_node_id
    beyond = sorted(i for i in reached if i >= limit) if reached and max(reached) >= limit else []
    for i in beyond[:20]:
        v.problem("counter", f"node {i}", f"is in use but the node counter is at {limit}: a new node "
                  f"would overwrite it")
    if v.incomplete & set(r.tree for r in results):
        # Nodes below an unreadable one are unreached but not leaked.
        v.note("stored nodes no tree reaches: not checked, some tree nodes could not be read")
        return
    # node_ids() may list a newer commit than the view; ids at or above the
    # view's counter were born after it and are not this view's business.
    unreached = set(v.store.node_ids()) - reached
    runs = merge((i, i + 1) for i in unreached if i < limit)
    for s, e in runs:
        v.problem("leak", f"node store nodes {s}" + (f"-{e - 1}" if e - s > 1 else ""),
                  f"{e - s} stored node{'s' if e - s > 1 else ''} that no tree reaches")


# ------------------------------------------------------------------ address spaces

def cross_check(v):
    lba_names = set(v.lba_trees) | {n for n in v.forest.tree_names()
                                    if n in (RUNNING_TREE, ANCHOR_TREE) or n.startswith(SNAP_TREE_PREFIX)}
    lba_complete = (not (lba_names & v.incomplete) and RUNNING_TREE in lba_names
                    and DELETING_KEY.decode() not in v.incomplete)
    vba_complete = VBA_TREE not in v.incomplete
    csum_complete = CSUM_TREE not in v.incomplete
    free_complete = FREE_TREE not in v.incomplete and v.state is not None
    referenced = _packed_runs(v.ref_packed)
    mapped = merge(zip(map(itemgetter(0), v.mapped), map(itemgetter(1), v.mapped)))
    v.report.blocks = sum(e - s for s, e in mapped)

    if vba_complete:
        _report_unmapped(v, subtract(referenced, mapped))
    else:
        v.note("VBAs without a PBA: not checked, the VBA map cannot be read whole")
    if lba_complete:
        # VBAs a deletion in progress has not swept yet are its own, not leaked.
        held = merge(v.held) if v.held else []
        for s, e in subtract(subtract(mapped, referenced), held):
            v.problem("vba-leak", f"VBA {span(s, e)}", f"mapped to {_pbas_of(v, s, e)} but no snapshot "
                      f"or running point maps it: the space is never freed")
    else:
        v.note("leaked VBAs: not checked, some LBA tree cannot be read whole")
    if vba_complete and csum_complete:
        csums = merge(v.csum_runs)
        for s, e in subtract(mapped, csums):
            v.problem("csum", f"VBA {span(s, e)}", "is mapped but has no checksum: reads of it fail")
        for s, e in subtract(csums, mapped):
            v.problem("csum", f"VBA {span(s, e)}", "has a checksum but no VBA -> PBA entry")
    if vba_complete:
        _check_pbas(v, free_complete)
    _check_running_point_ownership(v)


def _packed_runs(packed) -> list[tuple[int, int]]:
    """The merged runs of extents packed as ``start << LEN_BITS | length``.

    Packed values sort as their ``(start, length)`` pairs do, so the runs
    come sorted from plain ints; duplicates (a snapshot's leaf repeats most
    of its parent's entries) go first.
    """
    xs = sorted(set(packed))
    starts = list(map(rshift, xs, repeat(LEN_BITS)))
    return merge_sorted(starts, list(map(add, starts, map(and_, xs, repeat(MAX_LEN)))))


def _pbas_of(v, s: int, e: int) -> str:
    out = []
    ms = v.mapped_sorted
    i = bisect.bisect_right(ms, (s, float("inf"))) - 1
    i = max(i, 0)
    while i < len(ms) and ms[i][0] < e and len(out) < 3:
        vba, ve, p = ms[i]
        a, b = max(vba, s), min(ve, e)
        if a < b:
            out.append(f"PBA {span(p + a - vba, p + b - vba)}")
        i += 1
    return ", ".join(out) or "?"


def _report_unmapped(v, holes):
    """One problem per tree extent that maps a VBA without a PBA."""
    if not holes:
        return
    refs = sorted(v.refs)
    starts = [r[0] for r in refs]
    for s, e in holes:
        # No extent is longer than MAX_LEN, so none starting earlier reaches in.
        i = bisect.bisect_left(starts, s - MAX_LEN)
        while i < len(refs) and refs[i][0] < e:
            vba, ve, label, lba = refs[i]
            a, b = max(vba, s), min(ve, e)
            if a < b:
                v.problem("unmapped", f"{label} LBA {span(lba + a - vba, lba + b - vba)}",
                          f"maps VBA {span(a, b)}, which has no VBA -> PBA entry: reads of it fail")
            i += 1


def _check_pbas(v, free_complete: bool):
    state = v.state
    # The VBA -> PBA extents by PBA, as packed (pba, length) ints: sorting
    # those costs what sorting tuples would not.
    xs = sorted(v.pba_packed)
    starts = list(map(rshift, xs, repeat(LEN_BITS)))
    ends = list(map(add, starts, map(and_, xs, repeat(MAX_LEN))))
    reach = list(accumulate(ends, max))
    if any(map(lt, starts[1:], reach)):
        _report_pba_doubles(v)
    used = merge_sorted(starts, ends)
    if not free_complete:
        v.note("PBAs both mapped and free, and allocator totals: not checked, the free map or the "
               "running point record cannot be read")
        return
    free = merge(v.free_runs)
    if v.log is not None:
        # The redo log's head: the one block the committed state holds outside the maps.
        head = [(v.log.head, v.log.head + 1)]
        if intersect(head, merge(used + free)):
            v.problem("alloc", f"PBA {v.log.head}", "is the redo log's head and also mapped or free: "
                      "the log can overwrite live data")
        used = merge(used + head)
    for s, e in intersect(used, free):
        v.problem("pba-free", f"PBA {span(s, e)}", "is mapped and also free: the allocator will "
                  "hand it out again and overwrite live data")
    space = [(0, state.pba_end)] if state.pba_end else []
    lost = subtract(space, merge(used + free))
    n_used = sum(e - s for s, e in used)
    n_free = sum(e - s for s, e in free)
    if lost:
        n_lost = sum(e - s for s, e in lost)
        v.problem("alloc", "PBA space", f"mapped {n_used} + free {n_free} blocks do not cover the PBA space "
                  f"of {state.pba_end} blocks: {n_lost} blocks are neither mapped nor free (lost), first "
                  f"at PBA {span(*lost[0])}")
    past = subtract(merge(used + free), space)
    if past and not any(p.kind == "alloc" and "past the end" in p.what for p in v.problems):
        v.problem("alloc", "PBA space", f"{sum(e - s for s, e in past)} blocks lie past pba_end "
                  f"{state.pba_end}")


def _report_pba_doubles(v):
    """PBAs mapped by more than one VBA, each overlap named."""
    by_pba = sorted((p, p + (e - vba), vba) for vba, e, p in v.mapped)
    reach_end, reach_p, reach_vba = -1, 0, None
    for p, pe, vba in by_pba:
        if p < reach_end:
            a, b = p, min(pe, reach_end)
            v.problem("pba-double", f"PBA {span(a, b)}", f"is mapped by VBA {span(vba, vba + b - a)} and by "
                      f"VBA {span(reach_vba + a - reach_p, reach_vba + b - reach_p)}: a write to one "
                      f"changes the other")
        if pe > reach_end:
            reach_end, reach_p, reach_vba = pe, p, vba


def _check_running_point_ownership(v):
    """A snapshot must not map a VBA the running point maps at or above its watermark."""
    if not v.rp_shared or RUNNING_TREE in v.incomplete or RUNNING_TREE not in v.lba_trees:
        return
    rp = ExtentMap(v.forest.tree(RUNNING_TREE))
    wm = v.state.vba_watermark
    for label, lba, vba, n in v.rp_shared:
        try:
            pieces = rp.pieces(lba, n)
        except VdiskError:
            return
        for s, t, c in pieces:
            if t == vba + (s - lba):
                v.problem("ownership", f"{label} LBA {span(s, s + c)}",
                          f"maps VBA {span(t, t + c)}, which the running point maps too at or above its "
                          f"watermark {wm}: a write there would change the snapshot")
