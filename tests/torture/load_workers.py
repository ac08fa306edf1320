"""Client threads of the load test, and the watchdog that times their requests.

Each :class:`Worker` owns one NBD connection and sends a seeded random mix
of requests (whole-block and sub-block writes, FUA writes, reads of any
alignment, trims, zeroes with and without NO_HOLE, block status, flushes), mostly into a
small hot region so the four connections overlap all the time. Every write
is recorded in the :class:`~load_model.Model` before it is sent and every
read is checked against it when its reply arrives.
"""

from __future__ import annotations

import random
import threading
import time

from load_model import Model, pattern
from load_serve import import_nbd

BS = 4096
WATCHDOG_LIMIT = 5.0


class Watchdog(threading.Thread):
    """Fails the run when any registered request waits longer than the limit."""

    def __init__(self, limit: float = WATCHDOG_LIMIT):
        super().__init__(name="load-watchdog", daemon=True)
        self.limit = limit
        self.inflight: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.fired: str | None = None
        self.longest = 0.0
        self.stop = threading.Event()
        self.tripped = threading.Event()

    def enter(self, who: str, what: str):
        with self.lock:
            self.inflight[who] = (what, time.monotonic())

    def leave(self, who: str):
        with self.lock:
            what, t0 = self.inflight.pop(who)
            self.longest = max(self.longest, time.monotonic() - t0)

    def run(self):
        while not self.stop.wait(0.1):
            now = time.monotonic()
            with self.lock:
                for who, (what, t0) in self.inflight.items():
                    if now - t0 > self.limit and self.fired is None:
                        self.fired = f"{who}: {what} has waited {now - t0:.1f} s (limit {self.limit:.0f} s)"
                        self.tripped.set()


class Worker(threading.Thread):
    """One connection's random I/O; stops when ``stop`` is set or on the first problem."""

    def __init__(self, name: str, h, model: Model, dog: Watchdog, rng: random.Random, hot: int,
                 stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.h, self.model, self.dog, self.rng, self.hot, self.stop = h, model, dog, rng, hot, stop
        self.nbd = import_nbd()
        self.problems: list[str] = []
        self.ops = 0
        self.written = 0

    def run(self):
        try:
            while not self.stop.is_set() and not self.problems and not self.dog.tripped.is_set():
                self.one()
                self.ops += 1
        except Exception as e:   # reported by the test thread, with the request that failed
            self.problems.append(f"{self.name}: {type(e).__name__}: {e}")

    def _range(self, max_len: int, aligned: bool) -> tuple[int, int]:
        r, size = self.rng, self.model.size
        area = self.hot if r.random() < 0.8 else size
        if aligned:
            n = r.randint(1, max(1, max_len // BS))
            off = r.randrange(0, area // BS) * BS
            return off, min(n * BS, size - off)
        off = r.randrange(0, area)
        return off, r.randint(1, min(max_len, size - off))

    def _call(self, what: str, fn, *args):
        self.dog.enter(self.name, what)
        try:
            return fn(*args)
        finally:
            self.dog.leave(self.name)

    def one(self):
        r, nbd, h, m = self.rng, self.nbd, self.h, self.model
        x = r.random()
        if x < 0.30:                     # read, any alignment
            off, n = self._range(64 << 10, r.random() < 0.5)
            rid, r0 = m.begin_read()
            try:
                data = bytes(self._call(f"read {off}+{n}", h.pread, n, off))
                r1 = time.monotonic()
                problems = m.check(off, data, r0, r1)
            finally:
                m.end_read(rid)
            self.problems += [f"{self.name}: read {off}+{n}: {p}" for p in problems]
            return
        if x < 0.75:                     # write: whole blocks, sub-block, or unaligned spans
            kind = r.random()
            if kind < 0.45:
                off, n = self._range(32 << 10, True)
            elif kind < 0.8:
                off, n = self._range(5000, False)
            else:
                off, n = self._range(40000, False)
            flags = nbd.CMD_FLAG_FUA if r.random() < 0.1 else 0
            op = m.begin_write(off, off + n)
            ok = False
            try:
                self._call(f"write {off}+{n} flags {flags}", h.pwrite, pattern(op.k, off, off + n), off, flags)
                ok = True
            finally:
                m.end_write(op, ok)
            self.written += n
            return
        if x < 0.97:                     # trim / zero, aligned or not
            off, n = self._range(48 << 10, r.random() < 0.6)
            op = m.begin_write(off, off + n, zero=True)
            ok = False
            y = r.random()
            try:
                if y < 0.4:
                    self._call(f"trim {off}+{n}", h.trim, n, off)
                elif y < 0.7:
                    self._call(f"zero {off}+{n}", h.zero, n, off)
                else:
                    flags = nbd.CMD_FLAG_NO_HOLE | (nbd.CMD_FLAG_FUA if r.random() < 0.3 else 0)
                    self._call(f"zero {off}+{n} NO_HOLE", h.zero, n, off, flags)
                ok = True
            finally:
                m.end_write(op, ok)
            return
        if x < 0.985:                    # block status: well-formed extents (contents are racing)
            off, n = self._range(256 << 10, r.random() < 0.5)
            got = []
            self._call(f"block_status {off}+{n}", h.block_status, n, off,
                       lambda ctx, o, ents, err: got.append((o, list(ents))))
            for o, ents in got:
                pos = o
                for length in ents[::2]:
                    if length <= 0 or pos + length > m.size:
                        self.problems.append(f"{self.name}: block_status {off}+{n}: bad extent {pos}+{length}")
                    pos += length
                if o != off or pos <= off:
                    self.problems.append(f"{self.name}: block_status {off}+{n}: extents {o}..{pos}")
            return
        self._call("flush", h.flush)
