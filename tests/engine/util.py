"""Small helpers shared by the engine tests."""

from __future__ import annotations

import os
import random
import tempfile

# LMDB commits fsync; on a memory file system that costs nothing, and these
# tests check logic and crash atomicity (SIGKILL keeps the page cache), not
# the storage device. VDISK_TEST_TMPDIR overrides the choice.
SCRATCH = os.environ.get("VDISK_TEST_TMPDIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)


def scratch_dir(prefix: str = "vdisk-test-") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH)


def pattern(seed: int, length: int) -> bytes:
    """Deterministic bytes with no zero byte (so data is told apart from holes)."""
    return random.Random(seed).randbytes(length).replace(b"\0", b"\1")


def run_child(code: str, *args, timeout: float = 60):
    """Run Python ``code`` in a fresh interpreter (another process: LMDB
    refuses to open one environment twice in a process); returns the
    CompletedProcess with text stdout/stderr."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


READ_CODE = """
import sys
from vdisk import Disk
with Disk.open(sys.argv[1], readonly=True) as d:
    sys.stdout.write(d.read(int(sys.argv[2]), int(sys.argv[3])).hex())
"""


def read_in_child(path: str, offset: int, length: int) -> bytes:
    """What a read-only opener in another process reads."""
    r = run_child(READ_CODE, path, offset, length)
    assert r.returncode == 0, r.stderr
    return bytes.fromhex(r.stdout)


def settled(disk):
    """The disk with its recent writes in the LBA, VBA and csum trees
    (vdisk/recent.py): what a test that looks at the trees themselves needs."""
    with disk.lock:
        return disk


def damage_data(disk, pba: int, block_size: int = 4096) -> None:
    """Overwrite two bytes of PBA ``pba`` in the disk's data file, behind the engine's back."""
    fd = os.open(os.path.join(disk.path, "data"), os.O_RDWR)
    try:
        os.pwrite(fd, b"\xde\xad", pba * block_size + 5)
    finally:
        os.close(fd)
