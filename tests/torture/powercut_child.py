"""The worker of test_powercut.py: applies the operation stream to a disk.

Run as ``python powercut_child.py DISK LOG SEED``. Opens DISK for writing and
applies ``powercut_model.operations(SEED, ...)`` until killed, appending to
LOG (on a real file system, not the one under test) one line per event::

    a I            operation I returned (acknowledged)
    d I            deletion I starts (the test may aim its cut inside it)
    e I KIND MSG   operation I raised the VdiskError KIND; the worker stops
    x I KIND MSG   operation I raised something else - an API bug

Each line is one unbuffered write, so it is in LOG before the next
operation starts, and a SIGKILL cannot lose it.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import powercut_model as pm  # noqa: E402

# More sweep commits per deletion: the cut then finds more commits to land in.
SWEEP_COMMIT_RUNS = 200


def run(disk, ops, log):
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "write":
            disk.write(op[1], pm.data_of(op[3], op[2]))
        elif kind == "zero":
            disk.zero(op[1], op[2])
        elif kind == "trim":
            disk.trim(op[1], op[2])
        elif kind == "scatter":
            _, b0, stride, n, dseed = op
            bs = disk.block_size
            data = pm.data_of(dseed, n * bs)
            for k in range(n):
                disk.write((b0 + k * stride) * bs, data[k * bs:(k + 1) * bs])
        elif kind == "flush":
            disk.flush()
        elif kind == "snap":
            disk.create_snapshot(op[1])
        elif kind == "delete":
            os.write(log, f"d {i}\n".encode())
            disk.delete_snapshot(op[1], buffer_bytes=pm.BIG_DELETE_BUFFER)
        elif kind == "revert":
            disk.revert(op[1])
        elif kind == "compact":
            disk.compact()
        os.write(log, f"a {i}\n".encode())


def main(path: str, log_path: str, seed: int):
    from vdisk import Disk
    from vdisk.errors import VdiskError
    from vdisk.snapshots import delete
    delete.COMMIT_RUNS = SWEEP_COMMIT_RUNS
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = -1
    try:
        disk = Disk.open(path)
        names = [s.name for s in disk.snapshots(exclusive=False)]
        ops = pm.operations(seed, disk.size, disk.block_size, names)

        def counted():
            nonlocal i
            for i, op in enumerate(ops):
                yield op
        run(disk, counted(), log)
    except VdiskError as e:
        os.write(log, f"e {i} {type(e).__name__} {e}\n".encode())
        sys.exit(3)
    except Exception as e:
        os.write(log, f"x {i} {type(e).__name__} {e}\n".encode())
        sys.exit(4)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
