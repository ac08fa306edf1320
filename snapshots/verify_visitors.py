"""What verify checks in each node of each map, as the walk reads it.

:func:`vdisk.btree.check.check_tree` checks the structure of a tree; the
visitors here are handed each node it reads (once: a node accepted from an
earlier tree is not visited again) and check what its entries mean for the
map it belongs to, gathering the runs the cross-checks compare:

- LBA -> VBA leaves: extents are not empty, do not overlap, end inside their
  tree's disk size, and map VBAs born before the snapshot (below its
  watermark); the part of an extent below the parent's watermark is mapped
  the same way by the parent, which is what deletion relies on.
- VBA -> PBA leaves: extents not empty, not overlapping, below ``vba_next``,
  their PBAs inside the PBA space ``[0, pba_end)``.
- checksum leaves: only the runs of VBAs they cover.
- free leaves: extents not empty, not overlapping, inside the PBA space.

The loops over entries are the hot path of a metadata verify: each test that
passes costs a comparison, and a message is built only for a problem.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, and_, le, lt, rshift

from vdisk.errors import VdiskError
from vdisk.extents import LEN_BITS, MAX_LEN, ExtentMap

from .verify_report import tree_label
from .verify_runs import span

ONE_VBA = 1 << LEN_BITS      # the lowest packed value whose VBA is not 0


@dataclass
class LbaTree:
    """What the leaves of one LBA -> VBA tree are held against."""

    name: str
    label: str
    size_blocks: int | None      # None when the size is unknown (damaged record)
    born_before: int | None      # every VBA it maps is below this
    parent_map: ExtentMap | None
    parent_label: str | None
    parent_wm: int
    is_snapshot: bool


def node_visitor(v, then):
    """Every node's seq against the counter; ``then(tree, node)`` for each leaf."""
    seq = v.forest.seq

    def visit(tree, node, lo, hi):
        if node.seq > seq:
            v.problem("counter", f"{tree_label(tree.name)} node {node.id}",
                      f"seq {node.seq} is above the seq counter {seq}")
        if then is not None and node.leaf:
            then(tree, node)
    return visit


# ------------------------------------------------------------------ LBA -> VBA

def lba_visitor(v, ctx: LbaTree | None):
    if ctx is None:
        return node_visitor(v, None)
    state = v.state
    rp_wm = state.vba_watermark if state is not None else None
    leaves = v.lba_leaves
    ref_packed = v.ref_packed

    def leaf(tree, node):
        keys, vals = node.keys, node.vals
        n = len(keys)
        v.report.extents += n
        if not n:
            return
        leaves.append((ctx.label, keys, vals))
        ref_packed.extend(vals)
        size, born, parent_map = ctx.size_blocks, ctx.born_before, ctx.parent_map
        # The whole leaf at once, in C loops (map, min, max, all): a healthy
        # leaf costs no Python loop per entry. Anything wrong and the loop
        # over its entries says what and where. Packed values order as
        # their VBAs do, so the lowest VBA is the lowest value's.
        lens = list(map(and_, vals, repeat(MAX_LEN, n)))
        ends = list(map(add, keys, lens))
        low = min(vals)
        # The highest VBA end is at most the highest VBA plus the longest
        # extent; only when that passes a limit is the exact one needed.
        top = (max(vals) >> LEN_BITS) + max(lens)
        if (born is not None and top > born) or (rp_wm is not None and top > rp_wm):
            top = max(map(add, map(rshift, vals, repeat(LEN_BITS, n)), lens))
        # With no empty extent and none overlapping the next, ends ascend.
        if (0 in lens or low < ONE_VBA or not all(map(le, ends, keys[1:]))
                or (size is not None and ends[-1] > size) or (born is not None and top > born)):
            _lba_leaf_problems(v, ctx, node, keys, list(map(rshift, vals, repeat(LEN_BITS, n))), lens)
        if ctx.is_snapshot and rp_wm is not None and top > rp_wm:
            for k, packed, m in zip(keys, vals, lens):
                vba = packed >> LEN_BITS
                if vba + m > rp_wm:
                    head = max(0, rp_wm - vba)
                    v.rp_shared.append((ctx.label, k + head, vba + head, m - head))
        if parent_map is not None and low < ctx.parent_wm << LEN_BITS:
            _check_parent_holds(v, ctx, node, keys, vals)
        _check_neighbours(v, ctx, tree, keys, vals)

    return node_visitor(v, leaf)


def _lba_leaf_problems(v, ctx: LbaTree, node, keys, vbas, lens):
    prev_end = prev_key = None
    size, born = ctx.size_blocks, ctx.born_before
    for k, vba, n in zip(keys, vbas, lens):
        if (n == 0 or vba == 0 or (prev_end is not None and k < prev_end)
                or (size is not None and k + n > size) or (born is not None and vba + n > born)):
            _lba_extent_problems(v, ctx, node, k, vba, n, prev_end, prev_key)
        prev_end, prev_key = k + n, k


def _lba_extent_problems(v, ctx: LbaTree, node, k, vba, n, prev_end, prev_key):
    where = f"{ctx.label} LBA {span(k, k + max(n, 1))}"
    if n == 0:
        v.problem("extent", where, f"empty extent (VBA {vba}, length 0) in node {node.id}")
        return
    if prev_end is not None and k < prev_end:
        v.problem("extent", where, f"overlaps the extent at LBA {prev_key} in node {node.id}")
    if ctx.size_blocks is not None and k + n > ctx.size_blocks:
        v.problem("extent", where, f"ends past the disk size ({ctx.size_blocks} blocks) in node {node.id}")
    if vba == 0:
        v.problem("extent", where, "maps VBA 0, which is never handed out")
    if ctx.born_before is not None and vba + n > ctx.born_before:
        if ctx.is_snapshot:
            v.problem("ownership", where, f"maps VBA {span(vba, vba + n)}, born after the snapshot was "
                      f"taken (its watermark is {ctx.born_before})")
        else:
            v.problem("counter", where, f"maps VBA {span(vba, vba + n)}, not below vba_next {ctx.born_before}")


def _check_parent_holds(v, ctx: LbaTree, node, keys, vals):
    """VBAs below the parent's watermark were born before it: it maps them too.

    A snapshot's leaf is mostly a copy of its parent's: an entry the parent
    holds exactly as it is maps the same blocks the same way, so only the
    others are held against the parent's extents piece by piece.
    """
    wm = ctx.parent_wm
    below = wm << LEN_BITS          # a packed value under it has its VBA below the watermark
    entries = set(compress(zip(keys, vals), map(lt, vals, repeat(below))))
    try:
        entries -= set(ctx.parent_map.tree.items_from_floor(keys[0], keys[-1] + 1))
        if not entries:
            return
        runs = [(k, p >> LEN_BITS, min(p & MAX_LEN, wm - (p >> LEN_BITS))) for k, p in sorted(entries)]
        lo = runs[0][0]
        hi = max(k + m for k, _v, m in runs)
        pieces = ctx.parent_map.pieces(lo, hi - lo)
    except VdiskError:
        ctx.parent_map = None
        v.note(f"{ctx.label}: not compared with its parent, whose tree cannot be read")
        return
    starts = [s for s, _t, _n in pieces]
    for k, vba, m in runs:
        pos = k
        i = max(0, bisect.bisect_right(starts, k) - 1)
        missing = []
        while i < len(pieces) and pieces[i][0] < k + m:
            s, t, c = pieces[i]
            a, b = max(s, k), min(s + c, k + m)
            if a < b and t + (a - s) == vba + (a - k):
                if a > pos:
                    missing.append((pos, a))
                pos = max(pos, b)
            i += 1
        if pos < k + m:
            missing.append((pos, k + m))
        for a, b in missing:
            v.problem("ownership", f"{ctx.label} LBA {span(a, b)}",
                      f"maps VBA {span(vba + a - k, vba + b - k)}, born before its parent {ctx.parent_label} "
                      f"(watermark {ctx.parent_wm}), which does not map it so: deleting the parent "
                      f"would free it")


def _check_neighbours(v, ctx: LbaTree, tree, keys, vals):
    """Extents of this leaf against the ones just outside it in the same tree."""
    try:
        first = keys[0]
        prev = tree.floor(first - 1) if first > 0 else None
        if prev is not None and prev[0] + (prev[1] & MAX_LEN) > first:
            _overlap(v, ctx, prev[0], first)
        last, packed = keys[-1], vals[-1]
        nxt = next(tree.items(last + 1), None)
        if nxt is not None and last + (packed & MAX_LEN) > nxt[0]:
            _overlap(v, ctx, last, nxt[0])
    except VdiskError:
        pass  # the unreadable node is reported by the walk


def _overlap(v, ctx, a, b):
    key = (ctx.name, a, b)
    if key in v.seen_overlaps:
        return
    v.seen_overlaps.add(key)
    v.problem("extent", f"{ctx.label} LBA {a}", f"extent overlaps the next one, at LBA {b}")


def check_last_extent(v, ctx: LbaTree):
    """A subtree accepted from an older tree was held against that tree's size."""
    if ctx.size_blocks is None or ctx.name in v.incomplete:
        return
    try:
        last = v.forest.tree(ctx.name).floor_any()
    except VdiskError:
        return
    if last is not None and last[0] + (last[1] & MAX_LEN) > ctx.size_blocks:
        v.problem("extent", f"{ctx.label} LBA {last[0]}",
                  f"ends past the disk size ({ctx.size_blocks} blocks)")


# ------------------------------------------------------------------ maps

def vba_visitor(v):
    state = v.state
    vba_next = state.vba_next if state is not None else None
    pba_end = state.pba_end if state is not None else None
    prev_end = [0]
    mapped = v.mapped
    pba_packed = v.pba_packed

    def leaf(tree, node):
        keys, vals = node.keys, node.vals
        n = len(keys)
        v.report.extents += n
        if not n:
            return
        # As for the LBA leaves: the whole leaf in C loops, the entries one
        # by one only when something is wrong.
        lens = list(map(and_, vals, repeat(MAX_LEN, n)))
        ends = list(map(add, keys, lens))
        pbas = list(map(rshift, vals, repeat(LEN_BITS, n)))
        if (0 in lens or keys[0] < prev_end[0] or not all(map(le, ends, keys[1:]))
                or (state is not None and (max(ends) > vba_next or max(map(add, pbas, lens)) > pba_end))):
            _vba_leaf(v, node, keys, vals, prev_end)
            return
        prev_end[0] = ends[-1]
        mapped.extend(zip(keys, ends, pbas))
        pba_packed.extend(vals)
    return node_visitor(v, leaf)


def _vba_leaf(v, node, keys, vals, prev_end):
    state = v.state
    for vba, packed in zip(keys, vals):
        p, n = packed >> LEN_BITS, packed & MAX_LEN
        if n == 0 or vba < prev_end[0] or (state is not None and (vba + n > state.vba_next
                                                                  or p + n > state.pba_end)):
            _vba_extent_problems(v, node, vba, p, n, prev_end[0])
            if n == 0:
                continue
        prev_end[0] = vba + n
        v.mapped.append((vba, vba + n, p))
        v.pba_packed.append(packed)


def _vba_extent_problems(v, node, vba, p, n, prev_end):
    where = f"VBA {span(vba, vba + max(n, 1))}"
    state = v.state
    if n == 0:
        v.problem("extent", where, f"empty VBA -> PBA extent (PBA {p}) in node {node.id}")
        return
    if vba < prev_end:
        v.problem("extent", where, f"overlaps the VBA extent ending at {prev_end - 1} in node {node.id}")
    if state is not None:
        if vba + n > state.vba_next:
            v.problem("counter", where, f"is mapped but not below vba_next {state.vba_next}")
        if p + n > state.pba_end:
            v.problem("alloc", where, f"maps PBA {span(p, p + n)}, past the end of the PBA space "
                      f"({state.pba_end} blocks)")


def csum_visitor(v):
    runs = v.csum_runs
    seq = v.forest.seq

    # node_visitor's seq check and the leaf's runs in one call: this map is
    # most of the nodes a verify reads.
    def visit(tree, node, lo, hi):
        if node.seq > seq:
            v.problem("counter", f"{tree_label(tree.name)} node {node.id}",
                      f"seq {node.seq} is above the seq counter {seq}")
        if not node.leaf:
            return
        keys = node.keys
        if not keys:
            return
        first, last = keys[0], keys[-1]
        if last - first == len(keys) - 1:
            # One contiguous run: the common case.
            if runs and first == runs[-1][1]:
                runs[-1] = (runs[-1][0], last + 1)
            else:
                runs.append((first, last + 1))
            return
        spans = []
        start = prev = first
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
    return visit


def free_visitor(v):
    state = v.state
    prev = [None]

    def leaf(tree, node):
        v.report.extents += len(node.keys)
        for p, n in zip(node.keys, node.vals):
            where = f"free PBA {span(p, p + max(n, 1))}"
            if n == 0:
                v.problem("alloc", where, f"empty free extent in node {node.id}")
                continue
            if prev[0] is not None and p < prev[0][1]:
                v.problem("alloc", where, f"overlaps the free extent at PBA {prev[0][0]}: freed twice")
            prev[0] = (p, p + n)
            if state is not None and p + n > state.pba_end:
                v.problem("alloc", where, f"is past the end of the PBA space ({state.pba_end} blocks)")
            v.free_runs.append((p, p + n))
    return node_visitor(v, leaf)
