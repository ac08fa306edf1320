"""Snapshots taken and deleted through the CLI while a client writes.

The writer stamps every 4 KiB write with its sequence number, so a block's
bytes say which write put them there. A snapshot taken by ``vdisk snapshot
create`` must equal the disk after exactly the first L writes, for one L
between the writes completed before the command started and the writes
started before it returned: nothing completed is missing, nothing later is
in, and no write is torn.
"""

from __future__ import annotations

import random
import threading
import time

from nbd_util import pattern, run_vdisk

BS = 4096
BLOCKS = 4096          # the writer's 16 MiB working set (few overwrites between snapshots)
BASE = 8 << 20         # where it lives on the disk


class Writer(threading.Thread):
    def __init__(self, served, seed=1):
        super().__init__(daemon=True)
        self.h = served.connect()
        self.rng = random.Random(seed)
        self.log: list[int] = []        # block of write i (write i carries stamp i + 1)
        self.started = 0
        self.completed = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                i = len(self.log)
                blk = self.rng.randrange(BLOCKS)
                self.log.append(blk)
                self.started = i + 1
                self.h.pwrite(pattern(i + 1, BS), BASE + blk * BS)
                self.completed = i + 1
                # A steady VM-like rate, not a flood: each commit in the
                # engine costs per overwritten block, and the test's time
                # should go to snapshots, not to that.
                time.sleep(0.0005)
        except Exception as e:   # reported by the test thread
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(timeout=30)
        assert not self.is_alive() and self.error is None, self.error
        self.h.shutdown()


def _stamps(h) -> list[int]:
    data = bytes(h.pread(BLOCKS * BS, BASE))
    out = []
    for b in range(BLOCKS):
        block = data[b * BS:(b + 1) * BS]
        stamp = int.from_bytes(block[:8], "little")
        assert block == (pattern(stamp, BS) if stamp else bytes(BS)), f"block {b} is torn or foreign"
        out.append(stamp)
    return out


def _prefix_length(stamps: list[int], log: list[int], lo: int, hi: int) -> int | None:
    """The L in [lo, hi] such that the first L writes give exactly ``stamps``."""
    model = [0] * BLOCKS
    for i in range(lo):
        model[log[i]] = i + 1
    for n in range(lo, hi + 1):
        if model == stamps:
            return n
        if n < len(log):
            model[log[n]] = n + 1
    return None


def test_snapshots_under_live_io_hold_exactly_the_completed_writes(disk, serve):
    s = serve(disk)
    w = Writer(s)
    w.start()
    taken = {}       # name -> (completed before, started after, stamps read right away)
    try:
        for k in range(6):
            time.sleep(0.15)
            name = f"live{k}"
            lo = w.completed
            run_vdisk("snapshot", "create", disk, name)
            hi = w.started
            snap = s.connect(name)
            taken[name] = (lo, hi, _stamps(snap))
            snap.shutdown()
            if k in (2, 4):
                # Delete an older snapshot while the writer keeps going.
                victim = f"live{k - 2}"
                run_vdisk("snapshot", "delete", disk, victim)
                del taken[victim]
        time.sleep(0.1)
    finally:
        w.finish()
    assert w.completed > 100, "the writer hardly ran; the test proves nothing"
    for name, (lo, hi, first_read) in taken.items():
        snap = s.connect(name)
        stamps = _stamps(snap)
        snap.shutdown()
        assert stamps == first_read, f"snapshot {name} changed after it was taken"
        n = _prefix_length(stamps, w.log, lo, hi)
        assert n is not None, f"snapshot {name} is not the disk after any prefix of writes {lo}..{hi}"
    listed = run_vdisk("snapshot", "list", disk).stdout
    assert "live0" not in listed and "live2" not in listed and "live5" in listed
    # The running point holds every write.
    h = s.connect()
    assert _prefix_length(_stamps(h), w.log, w.completed, w.completed) == w.completed
    h.shutdown()
