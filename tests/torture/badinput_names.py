"""Hostile snapshot names, and a FUSE mount to look them up as files.

A name is either refused in one line (the engine's InvalidArgument, CLI
exit 2) or accepted - and then it must work everywhere: the listing, the
NBD export under its own name and its printed URI, the FUSE file
``snapshots/NAME.img``, delete and revert. Names starting with '-' are
given to the CLI after ``--``, as with any command-line argument.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

from load_serve import alive, run_vdisk, vdisk_cmd

NAMES = ["-", "--", "-h", "--help", "-v", ".", "..", "...", ".hidden", "a" * 64, "a" * 65, "x" * 10000,
         "a\0b", "a\nb", "a\rb", "a/b", "/", "\\", "ü", "名前", "~x", " ", "", "a b", "*", "$(id)", "%2e%2e",
         "a\x1b[2Jb", "con", "nul", "a:b", "\udcff"]


def cli_form(name: str) -> list:
    """argv tail that passes ``name`` as the NAME argument (bytes for undecodable ones)."""
    arg = os.fsencode(name) if any(0xDC80 <= ord(c) <= 0xDCFF for c in name) else name
    return ["--", arg]


def fuse_missing() -> list[str]:
    out = [t for t in ("fusermount3",) if shutil.which(t) is None]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        out.append("/dev/fuse")
    return out


class Mount:
    """``vdisk mount DISK MP`` for the length of a with-block; always unmounted."""

    def __init__(self, disk: str, mp: str):
        self.disk, self.mp = disk, mp

    def __enter__(self):
        os.makedirs(self.mp, exist_ok=True)
        r = run_vdisk("mount", self.disk, self.mp)
        m = re.search(r"mount process PID (\d+)", r.stdout)
        self.pid = int(m.group(1)) if m else None
        return self

    def __exit__(self, *exc):
        r = subprocess.run(vdisk_cmd("umount", self.mp), capture_output=True, timeout=120)
        if r.returncode:
            if os.path.ismount(self.mp):
                subprocess.run(["fusermount3", "-u", "-z", self.mp], capture_output=True, timeout=60)
            if self.pid is not None and alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        assert r.returncode == 0, f"vdisk umount failed: {r.stderr!r}"
