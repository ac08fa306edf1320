"""Brute-force answers the tests compare diff, send and receive against."""

from __future__ import annotations

import os
import signal
import tempfile
import time

from vdisk.extents import ExtentMap
from vdisk.names import RUNNING_TREE, SNAP_TREE_PREFIX


# LMDB commits fsync; on a memory file system that costs nothing (as in tests/engine).
SCRATCH = os.environ.get("VDISK_TEST_TMPDIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)


def scratch_dir(prefix: str = "vdisk-replicate-") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH)


def block_map(disk, name) -> dict[int, int]:
    """LBA -> VBA of every mapped block of snapshot ``name`` (None: the running point), one by one."""
    tree = disk.forest.tree(RUNNING_TREE if name is None else SNAP_TREE_PREFIX + name)
    out = {}
    for lba, vba, n in ExtentMap(tree).extents():
        for i in range(n):
            out[lba + i] = vba + i
    return out


def contents(disk, name) -> bytes:
    view = disk if name is None else disk.open_snapshot(name)
    return view.read(0, view.size)


def changed_blocks(changes, bs) -> dict[int, bool]:
    """Block -> data flag of every block a list of Change covers."""
    out = {}
    for off, length, data in changes:
        assert off % bs == 0 and length % bs == 0 and length > 0
        for b in range(off // bs, (off + length) // bs):
            assert b not in out, f"block {b} reported twice"
            out[b] = data
    return out


def kill_after_checkpoint(p, buf: bytes, ends: list[int], checkpointed, wait: float = 20):
    """Feed the receiver ``p`` (a Popen with a stdin pipe) half of stream
    ``buf`` (``ends``: where each record ends), then one more record once
    the checkpoint interval (1 s) passed, so it checkpoints after it; once
    ``checkpointed()`` says so, SIGKILL it."""
    try:
        k = next(i for i, e in enumerate(ends) if e >= len(buf) // 2)
        assert k + 2 < len(ends)
        p.stdin.write(buf[:ends[k]])
        p.stdin.flush()
        time.sleep(1.2)                  # past the checkpoint interval (1 s)
        p.stdin.write(buf[ends[k]:ends[k + 1]])     # one more record: the receiver checkpoints after it
        p.stdin.flush()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if checkpointed():
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the receive never checkpointed")
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.communicate()
