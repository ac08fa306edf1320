"""The operation stream of the power-cut tests, and the model that replays it.

Both sides generate the same stream from (seed, disk size, block size, the
snapshot names on the disk at the start): the worker (powercut_child.py)
applies it to a disk and logs each operation it completed, the test replays
it on a model to know what every block may hold after a cut.

Operations (tuples, first item the kind):

=================================  ============================================
``("write", off, len, dseed)``     ``len`` bytes at ``off`` (often not aligned)
``("zero", off, len)``             write-zeroes; ``trim`` the same for trim
``("scatter", b0, stride, n, s)``  ``n`` one-block writes at b0, b0+stride, ...
``("flush",)``                     flush
``("snap", name)``                 create a snapshot; ``delete``, ``revert``
``("compact",)``                   give free blocks back to the file system
=================================  ============================================

``flush``, ``snap``, ``delete`` and ``revert`` commit (COMMIT_OPS): once one
returns, every write before it is durable. A *big deletion* (scatter 2n
blocks, snapshot, overwrite every other one, delete the snapshot) leaves the
snapshot n separate runs of its own, so its deletion sweeps in several
batches and commits, and spills its sort buffer to files.
"""

from __future__ import annotations

import random

COMMIT_OPS = ("flush", "snap", "delete", "revert")
MAX_SNAPSHOTS = 4
MAX_OPS_BETWEEN_COMMITS = 40
BIG_DELETE_RUNS = 700
# The deletion's sort buffer spills to files past this (see snapshots/runbuffer.py).
BIG_DELETE_BUFFER = 16000


def data_of(dseed: int, length: int) -> bytes:
    return random.Random(dseed).randbytes(length)


def operations(seed: int, size: int, bs: int, names, big_delete: float = 0.03):
    """Endless deterministic stream of operations (see the module docstring)."""
    rng = random.Random(seed)
    names = sorted(names)
    nblocks = size // bs
    since_commit = 0
    i = 0
    pending: list[tuple] = []
    while True:
        if pending:
            op = pending.pop(0)
        else:
            r = rng.random()
            if since_commit >= MAX_OPS_BETWEEN_COMMITS:
                r = 0.60
            if r < 0.45:
                b = rng.randrange(nblocks)
                off = b * bs + rng.choice([0, 0, 0, 1, bs // 2, bs - 1, rng.randrange(bs)])
                ln = rng.choice([rng.randrange(1, bs), bs, bs, rng.randrange(2, 33) * bs,
                                 rng.randrange(2, 65) * bs + rng.choice([1, -1, bs // 3])])
                ln = max(1, min(ln, size - off))
                op = ("write", off, ln, rng.getrandbits(48))
            elif r < 0.50:
                off = rng.randrange(size)
                op = ("zero", off, max(1, min(rng.randrange(1, 48 * bs), size - off)))
            elif r < 0.55:
                off = rng.randrange(size // bs) * bs
                op = ("trim", off, max(1, min(rng.randrange(1, 48) * bs, size - off)))
            elif r < 0.72:
                op = ("flush",)
            elif r < 0.79 and len(names) < MAX_SNAPSHOTS:
                op = ("snap", f"s{seed}-{i}")
            elif r < 0.85 and names:
                op = ("delete", rng.choice(names))
            elif r < 0.89 and names:
                op = ("revert", rng.choice(names))
            elif r < 0.92:
                op = ("compact",)
            elif r < 0.92 + big_delete and len(names) < MAX_SNAPSHOTS and nblocks >= 4 * BIG_DELETE_RUNS:
                b0 = rng.randrange(nblocks - 4 * BIG_DELETE_RUNS + 1)
                name = f"big{seed}-{i}"
                op = ("scatter", b0, 2, 2 * BIG_DELETE_RUNS, rng.getrandbits(48))
                pending = [("snap", name), ("scatter", b0, 4, BIG_DELETE_RUNS, rng.getrandbits(48)),
                           ("delete", name)]
            else:
                b = rng.randrange(nblocks)
                op = ("write", b * bs, bs, rng.getrandbits(48))
        if op[0] == "snap":
            names = sorted(names + [op[1]])
        elif op[0] == "delete":
            names = [n for n in names if n != op[1]]
        since_commit = 0 if op[0] in COMMIT_OPS else since_commit + 1
        yield op
        i += 1


def touched(op, bs: int, nblocks: int):
    """Blocks an operation may change (``None``: possibly all)."""
    kind = op[0]
    if kind in ("write", "zero", "trim"):
        return range(op[1] // bs, -(-(op[1] + op[2]) // bs))
    if kind == "scatter":
        return range(op[1], op[1] + op[2] * op[3], op[2])
    if kind == "revert":
        return None
    return ()


def apply(op, model: bytearray, snaps: dict, bs: int) -> bytearray:
    """Apply one operation to (model, snapshot name -> bytes); returns the model."""
    kind = op[0]
    if kind == "write":
        _, off, ln, dseed = op
        model[off:off + ln] = data_of(dseed, ln)
    elif kind in ("zero", "trim"):
        model[op[1]:op[1] + op[2]] = bytes(op[2])
    elif kind == "scatter":
        _, b0, stride, n, dseed = op
        data = data_of(dseed, n * bs)
        for k in range(n):
            b = b0 + k * stride
            model[b * bs:(b + 1) * bs] = data[k * bs:(k + 1) * bs]
    elif kind == "snap":
        snaps[op[1]] = bytes(model)
    elif kind == "delete":
        snaps.pop(op[1], None)
    elif kind == "revert":
        model = bytearray(snaps[op[1]])
    return model


class Allowed:
    """What each block may read after a cut: its contents in any state from
    the last acknowledged commit to the end of the operation in flight."""

    def __init__(self, model: bytes, bs: int):
        self.bs = bs
        self.base = model
        self.extra: dict[int, set[int]] = {}      # block -> hashes of later contents

    def add(self, model, blocks):
        bs = self.bs
        blocks = range(len(model) // bs) if blocks is None else blocks
        for b in blocks:
            chunk = bytes(model[b * bs:(b + 1) * bs])
            if chunk != self.base[b * bs:(b + 1) * bs]:
                self.extra.setdefault(b, set()).add(hash(chunk))

    def check(self, got: bytes) -> tuple[list[int], int]:
        """(blocks that read something not allowed, blocks that read a later state)."""
        bs = self.bs
        bad, newer = [], 0
        for b in range(len(self.base) // bs):
            chunk = got[b * bs:(b + 1) * bs]
            if chunk == self.base[b * bs:(b + 1) * bs]:
                continue
            if hash(chunk) in self.extra.get(b, ()):
                newer += 1
            else:
                bad.append(b)
        return bad, newer
