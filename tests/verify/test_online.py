"""verify beside a writer: one committed view, no pause, no false alarms.

The writer is another process holding the disk open for writing (and its
lock) while it writes, trims, flushes, snapshots, reverts and deletes; verify opens
the metadata read-only and must find every state it sees clean. Blocks a
writer moves or frees while ``--data`` reads them must not be reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vdisk import Disk
from vdisk.errors import Busy
from vdisk.snapshots.verify import verify, verify_open_disk

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WRITER = r"""
import os, random, sys, time
from vdisk import Disk
path, seconds = sys.argv[1], float(sys.argv[2])
rng = random.Random(7)
d = Disk.open(path)
bs = d.block_size
snaps = [s.name for s in d.snapshots(exclusive=False)]
print("ready", flush=True)
end = time.monotonic() + seconds
i = commits = 0
while time.monotonic() < end:
    i += 1
    # A hot region: blocks born after the last snapshot are rewritten in
    # place, so their old PBAs are freed, punched and handed out again.
    off = rng.randrange(0, 64 * bs) if i % 3 else rng.randrange(0, d.size - 9000)
    d.write(off, rng.randbytes(rng.randrange(1, 9000)))
    if i % 5 == 0:
        d.trim(rng.randrange(0, 64 * bs), rng.randrange(1, 6 * bs))
    if i % 4 == 0:
        d.flush()
        commits += 1
    if i % 70 == 0 and snaps:
        d.revert(snaps[-1])
    if i % 40 == 0:
        name = f"w{i}"
        d.create_snapshot(name)
        snaps.append(name)
        if len(snaps) > 6:
            d.delete_snapshot(snaps.pop(0))
d.close()
print("commits", commits, flush=True)
"""


def test_verify_beside_a_writer_process_stays_clean(disk_copy):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", WRITER, disk_copy, "3"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with pytest.raises(Busy):
            Disk.open(disk_copy)          # the writer really holds it
        reports = []
        deadline = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < deadline:
            reports.append(verify(disk_copy, data=len(reports) % 2 == 1))
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    bad = [r for r in reports if not r.ok]
    assert not bad, "\n".join(f"{p.kind}: {p}" for p in bad[0].problems)
    assert len(reports) >= 4
    assert int(out.split()[-1]) >= 10        # the writer committed all along
    final = verify(disk_copy, data=True)
    assert final.ok and final.data_moved == 0


def test_blocks_freed_during_the_data_pass_are_not_reported(open_copy):
    """The data pass reads blocks the view maps; a trim frees and punches them meanwhile."""
    d = open_copy
    d.write(0, os.urandom(600 * d.block_size))      # after the last snapshot: the running point's own
    d.flush()
    seen = []

    def progress(phase, done, total):
        if phase == "data" and not seen:
            seen.append(done)
            d.trim(0, d.size)                      # free and punch every block only it held
            d.write(0, os.urandom(300 * d.block_size))
            d.flush()

    r = verify_open_disk(d, data=True, progress=progress)
    assert seen
    assert r.ok, "\n".join(f"{p.kind}: {p}" for p in r.problems)
    assert r.data_moved > 0          # they were read as changed, and cleared by a fresh view
    assert verify_open_disk(d, data=True).ok
