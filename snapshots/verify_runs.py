"""Interval algebra over sorted runs: how verify compares address spaces.

A run is a half-open ``(start, end)`` range of one address space (LBAs, VBAs,
PBAs or node ids). The cross-checks hold whole maps against each other, so
they work on merged run lists rather than on blocks: the cost follows the
number of extents, not the size of the disk.
"""

from __future__ import annotations


def merge(runs) -> list[tuple[int, int]]:
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
