"""The kernel's mount table, as far as vdisk mounts need it.

A vdisk mount is listed in ``/proc/self/mountinfo`` with file system type
``fuse.vdisk`` and the absolute disk path as its source (the ``fsname`` and
``subtype`` options :mod:`vdisk.fusefs.daemon` mounts with). That is enough to
go from a mountpoint to its disk (``vdisk umount``) and from a disk to its
mounts (stale mounts of a disk are cleaned before mounting it again).

A mount whose process died stays in the table; every access to it fails with
ENOTCONN ("Transport endpoint is not connected") until it is unmounted. Such
a mount is *stale*.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

FSTYPE = "fuse.vdisk"
SUBTYPE = "vdisk"
MOUNTINFO = "/proc/self/mountinfo"
# Errors a dead FUSE server's mount gives on stat.
STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


@dataclass
class Mount:
    mountpoint: str
    fstype: str
    source: str

    @property
    def is_vdisk(self) -> bool:
        return self.fstype == FSTYPE


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \\ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[Mount]:
    """Every mount in this process's mount namespace."""
    out = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            rest = right.split(" ")
            if len(fields) < 5 or len(rest) < 2:
                continue
            out.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return out


def _canonical(path: str) -> str:
    """An absolute path with symlinks resolved in its parent only.

    The last component may be a stale mount, where every stat fails; the
    mount table lists mountpoints by their real path.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def find(mountpoint: str) -> Mount | None:
    """The topmost mount at ``mountpoint``, or None."""
    want = _canonical(mountpoint)
    found = None
    for m in mounts():
        if m.mountpoint == want:
            found = m   # later lines are mounted on top of earlier ones
    return found


def mounts_of_disk(disk_path: str) -> list[Mount]:
    want = os.path.realpath(disk_path)
    return [m for m in mounts() if m.is_vdisk and m.source == want]


def is_stale(mountpoint: str, timeout: float = 5.0) -> bool:
    """True if the mount's server is gone (ENOTCONN).

    Asks with statfs, which the kernel always sends to the server: a stat
    may be answered from cached attributes for a second after the server
    died. A server that does not answer within ``timeout`` is alive (busy
    or hung), not stale.
    """
    result: list = []

    def probe():
        try:
            os.statvfs(mountpoint)
            result.append(None)
        except OSError as e:
            result.append(e.errno)

    t = threading.Thread(target=probe, name="vdisk-mount-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(result) and result[0] in STALE_ERRNOS


def unmount(mountpoint: str, lazy: bool = False) -> tuple[bool, str]:
    """Unmount with fusermount3 (``umount`` as a fallback for root).

    Returns (done, why not). ``lazy`` detaches the mount now and lets the
    kernel finish it when its last open file is closed (needed for a stale
    mount, whose dead server can answer nothing).
    """
    tools = []
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount:
        tools.append([fusermount, "-u", "-q"] + (["-z"] if lazy else []) + [mountpoint])
    if os.geteuid() == 0 and shutil.which("umount"):
        tools.append(["umount"] + (["-l"] if lazy else []) + [mountpoint])
    if not tools:
        return False, "neither fusermount3 nor umount is available (Debian package fuse3)"
    why = ""
    for argv in tools:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return True, ""
        why = (r.stderr.strip().splitlines() or [f"{argv[0]} exited {r.returncode}"])[-1]
        if "busy" in why.lower():
            break   # the other tool would say the same
    return False, why
