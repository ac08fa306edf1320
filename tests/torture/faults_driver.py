"""Drive a Disk through powercut_model operations while faults fire, and know
afterwards what every block and snapshot may hold.

The rule the checks follow (the engine's durability rule): what a
successful commit (flush, snapshot create/delete/revert) covered is
durable; acknowledged writes after it may or may not be; an operation that
raised may have happened or not, and a block it touched may hold its value
until an acknowledged overwrite has been committed. A snapshot that existed
at the last successful commit exists and is unchanged, unless an operation
that raised was deleting it.
"""

from __future__ import annotations

import powercut_model as pm
from vdisk.errors import VdiskError


class Driver:
    def __init__(self, disk, size: int, bs: int):
        self.disk = disk
        self.size, self.bs = size, bs
        self.nblocks = size // bs
        self.model = bytearray(disk.read(0, size))
        self.snaps = {s.name: disk.open_snapshot(s.name).read(0, size)
                      for s in disk.snapshots(exclusive=False)}
        self._committed()
        self.maybe: dict[int, set[int]] = {}      # block -> hashes a failed op may have left
        self.overwritten: set[int] = set()        # maybe-blocks an acked write covered since
        self.maybe_snaps: dict[str, bytes] = {}
        self.maybe_deleted: set[str] = set()
        self.errors: list[tuple[tuple, VdiskError]] = []
        self.raw: list[tuple[tuple, BaseException]] = []
        self.acked_writes = 0          # writes acknowledged, then covered by a successful commit
        self._pending_writes = 0

    def _committed(self):
        self.base = bytes(self.model)
        self.base_snaps = dict(self.snaps)
        self.later: dict[int, set[int]] = {}

    def _block(self, model, b) -> int:
        return hash(bytes(model[b * self.bs:(b + 1) * self.bs]))

    def run(self, op):
        """Apply ``op``; returns the VdiskError it raised, or None."""
        d, kind = self.disk, op[0]
        try:
            if kind == "write":
                d.write(op[1], pm.data_of(op[3], op[2]))
            elif kind in ("zero", "trim"):
                getattr(d, kind)(op[1], op[2])
            elif kind == "scatter":
                _, b0, stride, n, dseed = op
                data = pm.data_of(dseed, n * self.bs)
                for k in range(n):
                    d.write((b0 + k * stride) * self.bs, data[k * self.bs:(k + 1) * self.bs])
            elif kind == "flush":
                d.flush()
            elif kind == "snap":
                d.create_snapshot(op[1])
            elif kind == "delete":
                d.delete_snapshot(op[1])
            elif kind == "revert":
                d.revert(op[1])
            elif kind == "compact":
                d.compact()
            elif kind == "read":
                d.read(op[1], op[2])
        except VdiskError as e:
            self.errors.append((op, e))
            self._failed(op)
            return e
        except Exception as e:         # the API must not let these out; the test asserts on them
            self.raw.append((op, e))
            self._failed(op)
            return e
        self._succeeded(op)
        return None

    def _succeeded(self, op):
        blocks = pm.touched(op, self.bs, self.nblocks)
        self.model = pm.apply(op, self.model, self.snaps, self.bs)
        if op[0] in pm.COMMIT_OPS:
            self._committed()
            for b in self.overwritten:
                self.maybe.pop(b, None)
            self.overwritten.clear()
            self.acked_writes += self._pending_writes
            self._pending_writes = 0
            return
        if op[0] in ("write", "zero", "trim", "scatter"):
            self._pending_writes += op[3] if op[0] == "scatter" else 1
        for b in (range(self.nblocks) if blocks is None else blocks):
            self.later.setdefault(b, set()).add(self._block(self.model, b))
            if b in self.maybe:
                self.overwritten.add(b)

    def _failed(self, op):
        blocks = pm.touched(op, self.bs, self.nblocks)
        snaps = dict(self.snaps)
        # A stream generated as if every operation succeeded may name a
        # snapshot whose creation failed: that revert changed nothing.
        if op[0] == "read" or (op[0] == "revert" and op[1] not in snaps):
            return
        tentative = pm.apply(op, bytearray(self.model), snaps, self.bs)
        for b in (range(self.nblocks) if blocks is None else blocks):
            self.maybe.setdefault(b, set()).add(self._block(tentative, b))
            self.overwritten.discard(b)
        if op[0] == "snap":
            self.maybe_snaps[op[1]] = bytes(self.model)
        elif op[0] == "delete":
            self.maybe_deleted.add(op[1])

    # ------------------------------------------------------------ after reopening

    def check(self, disk) -> tuple[list[str], int]:
        """Problems found on a reopened disk, and the number of lost blocks."""
        problems, lost = [], 0
        got = disk.read(0, self.size)
        bs = self.bs
        bad = []
        for b in range(self.nblocks):
            chunk = got[b * bs:(b + 1) * bs]
            if chunk == self.base[b * bs:(b + 1) * bs]:
                continue
            h = hash(chunk)
            if h in self.later.get(b, ()) or h in self.maybe.get(b, ()):
                continue
            bad.append(b)
        if bad:
            lost += len(bad)
            zeros = sum(got[b * bs:(b + 1) * bs] == bytes(bs) for b in bad)
            problems.append(f"{len(bad)} blocks read neither the last successful commit nor a later "
                            f"write ({zeros} of them zeros), first {bad[:8]}")
        names = {s.name for s in disk.snapshots(exclusive=False)}
        required = set(self.base_snaps) - self.maybe_deleted
        known = {**self.base_snaps, **self.snaps, **self.maybe_snaps}
        if not required <= names:
            lost += len(required - names)
            problems.append(f"snapshots lost: {sorted(required - names)}")
        if names - set(known):
            problems.append(f"unexpected snapshots: {sorted(names - set(known))}")
        for name in sorted(names & set(known)):
            data = disk.open_snapshot(name).read(0, self.size)
            if data != known[name]:
                n = sum(data[i:i + bs] != known[name][i:i + bs] for i in range(0, self.size, bs))
                lost += n
                problems.append(f"snapshot {name}: {n} blocks changed")
        return problems, lost
