"""Clean disks verify clean, and verifying many snapshots costs what differs.

The random sequence drives the engine through its public API (writes at odd
offsets, trims, zeroes, snapshots, reverts, deletes, growth, reopen) and
verifies the committed state after every step.
"""

from __future__ import annotations

import os
import random

import pytest

from vdisk import Disk
from vdisk.errors import InvalidArgument
from vdisk.snapshots.verify import verify, verify_open_disk

from .util import build_disk


def _assert_clean(report):
    assert report.ok, "verify found problems:\n" + "\n".join(f"{p.kind}: {p}" for p in report.problems)


def test_fresh_disk_is_clean(scratch):
    path = os.path.join(scratch, "disk")
    Disk.create(path, 1 << 20).close()
    r = verify(path, data=True)
    _assert_clean(r)
    assert r.trees == 4 and r.snapshots == 0 and r.blocks == 0 and r.data_blocks == 0
    assert not r.notes


def test_disk_with_many_snapshots_is_clean(template):
    r = verify(template, data=True)
    _assert_clean(r)
    assert r.snapshots == 12 and r.trees == 12 + 4
    assert r.blocks > 2048 and r.data_blocks == r.blocks
    assert not r.notes
    # Every snapshot and the running point were walked, oldest first.
    names = [t["tree"] for t in r.per_tree]
    assert names[:13] == [f"snapshot 's{i}'" for i in range(12)] + ["running point"]


def test_later_snapshots_only_read_what_differs(template):
    r = verify(template)
    lba = [t for t in r.per_tree if t["tree"].startswith(("snapshot", "running"))]
    first, rest = lba[0], lba[1:]
    assert first["nodes_shared"] == 0 and first["nodes_checked"] >= 10
    for t in rest:
        # Each later tree re-reads only its changed path(s), never the whole tree.
        assert t["nodes_checked"] <= first["nodes_checked"] // 2, t
        assert t["nodes_shared"] > 0, t
    # Walking every tree whole would read each tree's nodes again.
    assert sum(t["nodes_checked"] for t in lba) <= len(lba) * first["nodes_checked"] // 2


def test_open_disk_and_path_give_the_same_verdict(open_copy):
    d = open_copy
    d.write(12345, b"odd offset" * 100)
    d.checkpoint()                          # in the committed metadata, as after close
    a = verify_open_disk(d, data=True)
    _assert_clean(a)
    d.close()
    b = verify(d.path, data=True)
    _assert_clean(b)
    assert (a.trees, a.nodes_checked, a.blocks, a.extents) == (b.trees, b.nodes_checked, b.blocks, b.extents)


def test_verify_open_disk_sees_only_committed_state(open_copy):
    """Unflushed writes are not in the view, and do not make it inconsistent."""
    d = open_copy
    before = verify_open_disk(d)
    d.write(0, os.urandom(64 * 512))      # below the auto-commit threshold
    during = verify_open_disk(d)
    _assert_clean(during)
    assert during.blocks == before.blocks
    d.flush()
    _assert_clean(verify_open_disk(d, data=True))


# ---------------------------------------------------------------- random sequence


class _Driver:
    """Random engine operations; tracks the snapshot names that exist."""

    def __init__(self, d: Disk, rng: random.Random):
        self.d, self.rng = d, rng
        self.snaps: list[str] = []
        self.counter = 0

    def _range(self):
        d, rng = self.d, self.rng
        bs = d.block_size
        start = rng.choice([rng.randrange(d.size), rng.randrange(16) * bs, rng.randrange(16) * bs + rng.randrange(bs)])
        length = rng.choice([rng.randrange(1, bs), bs, bs + 1, 2 * bs - 1, rng.randrange(2, 40) * bs + rng.choice([0, 1, -1, 7])])
        start = min(start, d.size - 1)
        return start, max(1, min(length, d.size - start))

    def step(self) -> str:
        d, rng = self.d, self.rng
        op = rng.choices(["write", "trim", "zero", "snapshot", "revert", "delete", "grow", "reopen"],
                         [40, 8, 6, 10, 5, 8, 2, 2])[0]
        if op in ("write", "trim", "zero"):
            off, n = self._range()
            if op == "write":
                d.write(off, rng.randbytes(n))
            else:
                getattr(d, op)(off, n)
            return f"{op} {off}+{n}"
        if op == "snapshot" and len(self.snaps) < 8:
            self.counter += 1
            name = f"r{self.counter}"
            d.create_snapshot(name)
            self.snaps.append(name)
            return f"snapshot {name}"
        if op == "revert" and self.snaps:
            name = rng.choice(self.snaps)
            d.revert(name)
            return f"revert {name}"
        if op == "delete" and self.snaps:
            name = rng.choice(self.snaps)
            try:
                d.delete_snapshot(name)
            except InvalidArgument:
                return f"delete {name} refused"
            self.snaps.remove(name)
            return f"delete {name}"
        if op == "grow" and d.size < 4 * (256 << 10):
            d.resize(d.size + rng.randrange(1, 32) * d.block_size)
            return f"grow to {d.size}"
        if op == "reopen":
            path = d.path
            d.close()
            self.d = Disk.open(path)
            return "reopen"
        return "nothing"


@pytest.mark.parametrize("block_size, seed", [(4096, 1), (512, 2), (4096, 3), (512, 4)])
def test_random_operations_keep_the_disk_clean(scratch, block_size, seed):
    rng = random.Random(seed)
    d = Disk.create(os.path.join(scratch, "disk"), (256 << 10) if block_size == 512 else (2 << 20), block_size)
    drv = _Driver(d, rng)
    history = []
    try:
        for i in range(120):
            history.append(drv.step())
            drv.d.flush()
            r = verify_open_disk(drv.d, data=(i % 10 == 9))
            assert r.ok, ("after " + "; ".join(history[-12:]) + ":\n"
                          + "\n".join(f"{p.kind}: {p}" for p in r.problems))
    finally:
        drv.d.close()
    _assert_clean(verify(d.path, data=True))
