"""The worker of test_crash.py, and the operation stream both sides replay.

Run as ``python crash_child.py DISK SEED``: opens DISK for writing and applies
``operations(SEED, ...)`` until killed. After each operation that commits
(flush, snapshot, revert, delete) returns, it prints one line and flushes
stdout::

    flushed N          (N: index of the operation in the stream)
    snap NAME N
    revert NAME N
    delete NAME N

The stream depends only on the seed, the disk size and the snapshot family
found on the disk at the start (names, parents, the running point's parent),
so the test regenerates exactly the operations the child issued.
"""

from __future__ import annotations

import random
import sys

COMMIT_OPS = ("flush", "snap", "revert", "delete")

MAX_SNAPSHOTS = 10
MAX_OPS_BETWEEN_FLUSHES = 60   # far below the engine's auto-commit threshold


def family(disk):
    """(snapshot name -> parent, running point's parent) as the generator needs.

    Deferred deletions (snapshots deleted while the base of several others)
    are left out: users cannot name them.
    """
    from vdisk.disk import DEFERRED_PREFIX
    recs = {r.name: r.parent for r in disk.snapshot_records()}

    def visible(name):
        while name is not None and name.startswith(DEFERRED_PREFIX):
            name = recs[name]
        return name
    return ({n: visible(p) for n, p in recs.items() if not n.startswith(DEFERRED_PREFIX)},
            visible(disk.state.parent))


def operations(seed: int, size: int, block_size: int, parents: dict, running_parent):
    """Endless deterministic stream of operations.

    Deletes are made of any snapshot; one that is the base of several others
    is deferred by the engine (see snapshots/delete.py).
    """
    rng = random.Random(seed)
    parents = dict(parents)
    since_flush = 0
    i = 0
    while True:
        r = rng.random()
        if since_flush >= MAX_OPS_BETWEEN_FLUSHES:
            r = 0.80
        if r < 0.62:
            nblocks = size // block_size
            b = rng.randrange(nblocks)
            off = b * block_size + rng.choice([0, 0, 1, block_size - 1, rng.randrange(block_size)])
            ln = rng.choice([rng.randrange(1, block_size), block_size, rng.randrange(2, 65) * block_size + rng.choice([0, 1, -1])])
            ln = max(1, min(ln, size - off))
            op = ("write", off, rng.randbytes(ln))
        elif r < 0.72:
            off = rng.randrange(size)
            ln = max(1, min(rng.randrange(1, 40 * block_size), size - off))
            op = ("zero", off, ln)
        elif r < 0.88:
            op = ("flush",)
        elif r < 0.94:
            if len(parents) >= MAX_SNAPSHOTS:
                op = ("flush",)
            else:
                name = f"k{seed}-{i}"
                parents[name] = running_parent
                running_parent = name
                op = ("snap", name)
        elif r < 0.97 and parents:
            name = rng.choice(sorted(parents))
            running_parent = name
            op = ("revert", name)
        elif parents:
            candidates = sorted(parents)
            if not candidates:
                op = ("flush",)
            else:
                name = rng.choice(candidates)
                for child, p in parents.items():
                    if p == name:
                        parents[child] = parents[name]
                if running_parent == name:
                    running_parent = parents[name]
                del parents[name]
                op = ("delete", name)
        else:
            op = ("flush",)
        since_flush = 0 if op[0] in COMMIT_OPS else since_flush + 1
        yield op
        i += 1


def apply_to_model(op, model: bytearray, snaps: dict):
    """Apply one operation to (model, snapshot models); returns the new model."""
    kind = op[0]
    if kind == "write":
        _, off, data = op
        model[off:off + len(data)] = data
    elif kind == "zero":
        _, off, ln = op
        model[off:off + ln] = bytes(ln)
    elif kind == "snap":
        snaps[op[1]] = bytes(model)
    elif kind == "revert":
        model = bytearray(snaps[op[1]])
    elif kind == "delete":
        del snaps[op[1]]
    return model


def main(path: str, seed: int):
    from vdisk import Disk
    disk = Disk.open(path)
    parents, running_parent = family(disk)
    out = sys.stdout
    for i, op in enumerate(operations(seed, disk.size, disk.block_size, parents, running_parent)):
        kind = op[0]
        if kind == "write":
            disk.write(op[1], op[2])
        elif kind == "zero":
            disk.zero(op[1], op[2])
        elif kind == "flush":
            disk.flush()
            out.write(f"flushed {i}\n")
        elif kind == "snap":
            disk.create_snapshot(op[1])
            out.write(f"snap {op[1]} {i}\n")
        elif kind == "revert":
            disk.revert(op[1])
            out.write(f"revert {op[1]} {i}\n")
        elif kind == "delete":
            disk.delete_snapshot(op[1])
            out.write(f"delete {op[1]} {i}\n")
        if kind in COMMIT_OPS:
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
