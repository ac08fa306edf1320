"""Helpers for the FUSE tests: a real ``vdisk mount`` and its cleanup.

Every mount is the real CLI in a subprocess (so tests cover argument
handling, readiness, the detached mount process, signals and cleanup) on a
mountpoint under the test's temp directory. :meth:`Mounted.cleanup` runs at
teardown whatever the test did: ``vdisk umount``, then a lazy unmount, then
SIGKILL of a mount process still alive - no test leaves a mount behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

MiB = 1 << 20
TOOLS = ("fusermount3", "qemu-img", "mkfs.ext4", "debugfs", "e2fsck")


def missing() -> list[str]:
    out = [t for t in TOOLS if shutil.which(t) is None]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        out.append("/dev/fuse (read-write)")
    return out


def vdisk_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vdisk.cli.main", *args]


def run_vdisk(*args, check=True, timeout=60) -> subprocess.CompletedProcess:
    r = subprocess.run(vdisk_cmd(*args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"vdisk {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def pattern(seed: int, length: int) -> bytes:
    """Distinct, recognisable bytes: the seed repeated as 8-byte words."""
    word = seed.to_bytes(8, "little")
    return (word * (length // 8 + 1))[:length]


def is_mounted(mountpoint: str) -> bool:
    mp = os.path.realpath(os.path.dirname(mountpoint.rstrip("/")))
    mp = os.path.join(mp, os.path.basename(mountpoint.rstrip("/")))
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mp for line in f)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Mounted:
    """One ``vdisk mount DISK MP`` (background) and its mount process."""

    def __init__(self, disk: str, mountpoint: str):
        self.disk = disk
        self.mp = mountpoint
        self.pid = None

    def start(self, *args):
        os.makedirs(self.mp, exist_ok=True)
        r = run_vdisk("mount", self.disk, self.mp, *args)
        self.banner = r.stdout
        self.stderr = r.stderr
        m = re.search(r"mount process PID (\d+)", r.stdout)
        assert m, f"no PID in the banner: {r.stdout!r}"
        self.pid = int(m.group(1))

    @property
    def image(self) -> str:
        return os.path.join(self.mp, "disk.img")

    def snap(self, name: str) -> str:
        return os.path.join(self.mp, "snapshots", name + ".img")

    def umount(self) -> subprocess.CompletedProcess:
        return run_vdisk("umount", self.mp)

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def cleanup(self):
        if is_mounted(self.mp):
            subprocess.run(vdisk_cmd("umount", self.mp), capture_output=True, timeout=120)
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-u", "-z", self.mp], capture_output=True, timeout=60)
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
