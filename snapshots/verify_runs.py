"""Interval algebra over sorted runs: how verify compares address spaces.

A run is a half-open ``(start, end)`` range of one address space (LBAs, VBAs,
PBAs or node ids). The cross-checks hold whole maps against each other, so
they work on merged run lists rather than on blocks: the cost follows the
number of extents, not the size of the disk.
"""

from __future__ import annotations

from itertools import accumulate, compress, repeat
from operator import gt, itemgetter, lt, sub


def merge(runs) -> list[tuple[int, int]]:
    """Sorted, disjoint union; touching runs are joined."""
    pairs = sorted(runs)
    return merge_sorted(list(map(itemgetter(0), pairs)), list(map(itemgetter(1), pairs)))


def merge_sorted(starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """:func:`merge` of the runs ``zip(starts, ends)``, ``starts`` ascending.

    One pass of C loops, no Python loop per run (the LBA trees' extents
    are tens of thousands): a run begins wherever a start lies beyond the
    furthest end so far, and ends at the furthest end before the next.
    """
    if not all(map(lt, starts, ends)):
        keep = list(map(lt, starts, ends))          # empty runs take no part
        starts, ends = list(compress(starts, keep)), list(compress(ends, keep))
    if not starts:
        return []
    reach = list(accumulate(ends, max))
    cuts = list(compress(range(1, len(starts)), map(gt, starts[1:], reach)))
    firsts = [0, *cuts]
    lasts = [*map(sub, cuts, repeat(1)), len(starts) - 1]
    return list(zip(map(starts.__getitem__, firsts), map(reach.__getitem__, lasts)))


def subtract(a, b) -> list[tuple[int, int]]:
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


def intersect(a, b) -> list[tuple[int, int]]:
    """What ``a`` and ``b`` (both merged) have in common."""
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


def span(s: int, e: int) -> str:
    """How a report names the run ``[s, e)``."""
    return f"{s}" if e - s == 1 else f"{s}-{e - 1} ({e - s} blocks)"
