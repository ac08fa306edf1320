"""Whole-disk consistency checks shared by the engine tests.

``accounting(disk)`` returns a list of problems (empty when all is well):

* VBAs: the set referenced by the running point and every snapshot equals the
  set the VBA -> PBA map holds, which equals the set of checksum keys. A VBA
  mapped but referenced by nothing is a leak; one referenced but unmapped
  makes a read fail.
* PBAs: the mapped PBAs and the redo log's blocks, the free tree, the frees waiting for the next commit
  (``alloc.pending``) and the free extents the allocator holds outside the
  free tree (``alloc.held()``: its spare and the rest of its current extent)
  partition ``[0, alloc.end)``: nothing is mapped twice, nothing mapped is free, nothing
  is lost. It holds between commits too, so it needs no flush.

``consistency(disk)`` adds the B+tree checker (``check_forest``), and
``assert_consistent`` raises with every problem listed.
"""

from __future__ import annotations

from vdisk.btree.check import check_forest
from vdisk.extents import ExtentMap


def _runs_to_set(runs):
    out = set()
    for start, n in runs:
        out.update(range(start, start + n))
    return out


def accounting(disk) -> list[str]:
    # The disk's lock settles the recent writes into the trees (vdisk/recent.py).
    with disk.lock:
        return _accounting(disk)


def _accounting(disk) -> list[str]:
    f = disk.forest
    probs = []
    referenced = set()
    for name in f.tree_names():
        if name == "lba" or name.startswith("snap/"):
            for _lba, vba, n in ExtentMap(f.tree(name)).extents():
                referenced.update(range(vba, vba + n))
    mapped = set()
    pbas = []
    for vba, pba, n in disk._vba.extents():
        mapped.update(range(vba, vba + n))
        pbas.extend(range(pba, pba + n))
    # The redo log's blocks are used, by the log (vdisk/journal.py).
    pbas.extend(disk.log_blocks())
    csums = {k for k, _ in disk._csum.items()}
    if referenced - mapped:
        probs.append(f"{len(referenced - mapped)} referenced VBAs have no PBA, e.g. {sorted(referenced - mapped)[:5]}")
    if mapped - referenced:
        probs.append(f"{len(mapped - referenced)} VBAs are mapped but referenced by no tree (leak), "
                     f"e.g. {sorted(mapped - referenced)[:5]}")
    if csums != mapped:
        probs.append(f"checksum keys differ from mapped VBAs: {len(csums - mapped)} extra, {len(mapped - csums)} missing")
    if disk.state.vba_next <= max(mapped, default=0):
        probs.append(f"vba_next {disk.state.vba_next} is not above the largest mapped VBA {max(mapped)}")
    free_runs = list(disk.alloc.free.items()) + list(disk.alloc.pending) + disk.alloc.held()
    free = []
    for p, n in free_runs:
        free.extend(range(p, p + n))
    pset, fset = set(pbas), set(free)
    if len(pset) != len(pbas):
        probs.append(f"{len(pbas) - len(pset)} PBAs are mapped more than once")
    if len(fset) != len(free):
        probs.append(f"{len(free) - len(fset)} PBAs are free more than once")
    if pset & fset:
        probs.append(f"{len(pset & fset)} PBAs are both mapped and free, e.g. {sorted(pset & fset)[:5]}")
    everything = set(range(disk.alloc.end))
    if (pset | fset) - everything:
        probs.append(f"PBAs beyond alloc.end {disk.alloc.end}: {sorted((pset | fset) - everything)[:5]}")
    if everything - (pset | fset):
        probs.append(f"{len(everything - (pset | fset))} PBAs are neither mapped nor free (leak), "
                     f"e.g. {sorted(everything - (pset | fset))[:5]}")
    if disk.alloc.free_blocks() != len(free) - sum(n for _, n in disk.alloc.pending):
        probs.append(f"free_blocks() is {disk.alloc.free_blocks()}, the free tree and the allocator "
                     f"hold {len(free) - sum(n for _, n in disk.alloc.pending)}")
    return probs


def forest_problems(disk) -> list[str]:
    return [str(p) for r in check_forest(disk.forest) for p in r.problems]


def consistency(disk) -> list[str]:
    return accounting(disk) + forest_problems(disk)


def assert_consistent(disk):
    probs = consistency(disk)
    assert not probs, "disk is inconsistent:\n  " + "\n  ".join(probs)
