"""What a disk under concurrent I/O may contain: an exact model.

Every write carries bytes that name it: the 8-byte word at disk offset o of
write k is ``k << 40 | o // 8``, so any byte range of any write can be
generated again, and a wrong byte read back says which write it came from.
Trims and zeroes write zeros.

Each block keeps a ``base`` (its exact bytes when the round began, or when
its history was folded) and the writes since, each with the time it was
sent (``t0``) and the time its reply arrived (``t1``; None while in flight,
infinite when it failed, since a failed write may or may not have landed).
The server may order concurrent requests as it likes, so the check is the
regular-register rule, applied to every byte range in which the set of
covering writes is constant. A read sent at r0 and answered at r1 may
return, for that range:

* write W, if W was sent before r1 and no covering W2 both started after W
  completed and completed before the read was sent;
* the base, if no covering write completed before the read was sent.

So a write that completed with no overlapping write in flight must be read
back exactly, and concurrent overlapping writes may come back in either
order - but never a mix inside one request's range of one write, never a
stale block, never bytes nobody wrote.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from dataclasses import dataclass

INF = math.inf
PRUNE_AT = 24     # history length of a block that triggers pruning


@dataclass(eq=False)
class Op:
    k: int                  # write number (0: zeros)
    start: int              # byte range [start, end) on the disk
    end: int
    t0: float
    t1: float | None = None

    def done(self) -> float:
        return INF if self.t1 is None else self.t1


def pattern(k: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of write ``k`` (zeros for k == 0)."""
    if k == 0:
        return bytes(end - start)
    lo, hi = start // 8, -(-end // 8)
    words = array("Q", range((k << 40) + lo, (k << 40) + hi)).tobytes()
    return words[start - lo * 8:end - lo * 8]


def who_wrote(data: bytes, pos: int, at: int) -> str:
    """Name the write whose word covers data[pos] (read at disk offset ``at``)."""
    o = at + pos
    w0 = o - o % 8 - at
    if w0 < 0:              # the word straddles the start of the read: take the next one
        w0 += 8
    if w0 + 8 > len(data):
        return f"byte {data[pos]:#04x}"
    word = int.from_bytes(data[w0:w0 + 8], "little")
    if word == 0:
        return "zeros"
    k, off = word >> 40, (word & ((1 << 40) - 1)) * 8
    return f"write {k}" + ("" if off == at + w0 else f" (its bytes for offset {off}: misplaced)")


class Model:
    """The expected content of a disk of ``size`` bytes under concurrent I/O."""

    def __init__(self, size: int, block_size: int = 4096, base: bytes | None = None):
        self.size = size
        self.bs = block_size
        self.base = bytearray(base if base is not None else bytes(size))
        self.hist: dict[int, list[Op]] = {}
        self.lock = threading.Lock()
        self.next_k = 1
        self.readers: dict[int, float] = {}   # reader id -> t0 of reads not yet checked
        self._next_reader = 0
        self.checked_bytes = 0

    # ------------------------------------------------------------ recording

    def begin_write(self, start: int, end: int, zero: bool = False) -> Op:
        with self.lock:
            k = 0
            if not zero:
                k, self.next_k = self.next_k, self.next_k + 1
            op = Op(k, start, end, time.monotonic())
            for b in range(start // self.bs, -(-end // self.bs)):
                self.hist.setdefault(b, []).append(op)
            return op

    def end_write(self, op: Op, ok: bool):
        t1 = time.monotonic()
        with self.lock:
            op.t1 = t1 if ok else INF
            for b in range(op.start // self.bs, -(-op.end // self.bs)):
                if len(self.hist.get(b, ())) > PRUNE_AT:
                    self._prune(b)

    def begin_read(self) -> tuple[int, float]:
        """Register a read about to be sent; returns (reader id, t0)."""
        with self.lock:
            rid = self._next_reader
            self._next_reader += 1
            t0 = time.monotonic()
            self.readers[rid] = t0
            return rid, t0

    def end_read(self, rid: int):
        with self.lock:
            self.readers.pop(rid, None)

    # ------------------------------------------------------------ checking

    def check(self, start: int, data: bytes, r0: float, r1: float) -> list[str]:
        """Problems with ``data`` read at ``start`` by a read sent at r0, answered at r1."""
        problems = []
        end = start + len(data)
        with self.lock:
            for b in range(start // self.bs, -(-end // self.bs)):
                lo, hi = max(start, b * self.bs), min(end, (b + 1) * self.bs)
                ops = [op for op in self.hist.get(b, ()) if op.start < hi and op.end > lo]
                bounds = sorted({lo, hi, *(max(lo, min(hi, x)) for op in ops for x in (op.start, op.end))})
                for a, z in zip(bounds, bounds[1:]):
                    got = data[a - start:z - start]
                    cands = self._candidates([op for op in ops if op.start <= a and op.end >= z], r0, r1)
                    if any((self.base[a:z] if op is None else pattern(op.k, a, z)) == got for op in cands):
                        continue
                    names = ["base" if op is None else f"write {op.k}" for op in cands]
                    bad = next((i for i in range(len(got)) if all(
                        (self.base[a + i] if op is None else pattern(op.k, a + i, a + i + 1)[0]) != got[i]
                        for op in cands)), 0)
                    problems.append(f"bytes {a}..{z}: read back {who_wrote(data, a - start + bad, start)} "
                                    f"at byte {a + bad}, expected one of {', '.join(names) or 'nothing'}")
                    if len(problems) >= 5:
                        return problems
        self.checked_bytes += len(data)
        return problems

    def _candidates(self, covering: list[Op], r0: float, r1: float) -> list[Op | None]:
        out: list[Op | None] = []
        if not any(w2.done() < r0 for w2 in covering):
            out.append(None)
        for w in covering:
            if w.t0 >= r1:
                continue
            if any(w.done() < w2.t0 and w2.done() < r0 for w2 in covering):
                continue
            out.append(w)
        return out

    def _prune(self, b: int):
        """Drop writes no read can return any more (see the module's rule)."""
        horizon = min(self.readers.values(), default=time.monotonic())
        lo, hi = b * self.bs, (b + 1) * self.bs
        ops = self.hist[b]
        # A whole-block write that completed after every other one started
        # and before every possible future read becomes the new base.
        for w2 in reversed(ops):
            if (w2.start <= lo and w2.end >= hi and w2.done() < horizon
                    and all(w is w2 or w.done() < w2.t0 for w in ops)):
                self.base[lo:hi] = pattern(w2.k, lo, hi)
                self.hist[b] = []
                return
        keep = []
        for w in ops:
            if any(w2.done() < horizon and w.done() < w2.t0
                   and w2.start <= max(lo, w.start) and w2.end >= min(hi, w.end) for w2 in ops):
                continue
            keep.append(w)
        self.hist[b] = keep

    def settle(self, start: int, data: bytes):
        """At a quiescent point: what was read back becomes the exact state."""
        with self.lock:
            assert all(op.t1 is not None for ops in self.hist.values() for op in ops), "writes in flight"
            self.base[start:start + len(data)] = data
            self.hist = {}
