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

from load_serve import alive, close_handle, import_nbd, run_vdisk, vdisk_cmd

BS = 4096

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


def banner_exports(banner: str) -> dict[str, str]:
    """Snapshot name -> URI, as ``vdisk serve`` printed them."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^\s+(\S+)\s+snapshot (.+) \(read-only\)$", banner, re.M)}


def check_exports(srv, names: list[str], content: dict[str, bytes]) -> list[str]:
    """Each name as an NBD export, by name and by the URI the banner printed."""
    nbd = import_nbd()
    problems = []
    uris = banner_exports(srv.banner)
    if sorted(uris) != sorted(names):
        problems.append(f"banner lists {sorted(uris)}, snapshots are {sorted(names)}")
    for name in names:
        h = srv.connect(name)
        try:
            if bytes(h.pread(BS, 0)) != content[name]:
                problems.append(f"export {name!r} reads another snapshot's data")
        finally:
            close_handle(h)
        if name not in uris:
            continue
        h = nbd.NBD()
        try:
            h.connect_uri(uris[name])
            if bytes(h.pread(BS, 0)) != content[name] or not h.is_read_only():
                problems.append(f"URI {uris[name]} does not reach snapshot {name!r}")
        except nbd.Error as e:
            problems.append(f"URI {uris[name]} of snapshot {name!r}: {e}")
        finally:
            close_handle(h)
    return problems


def revert_and_delete(disk: str, names: list[str], content: dict[str, bytes]) -> list[str]:
    """Locally (no server): revert to each name, then delete them all."""
    from vdisk import Disk
    problems = []
    for name in names:
        r = run_vdisk("snapshot", "revert", disk, *cli_form(name), check=False)
        if r.returncode:
            problems.append(f"CLI revert {name!r}: {r.stderr.strip()}")
            continue
        with Disk.open(disk, readonly=True) as d:
            if d.read(0, BS) != content[name]:
                problems.append(f"after revert to {name!r} the disk reads other data")
    for name in names:
        r = run_vdisk("snapshot", "delete", disk, *cli_form(name), check=False)
        if r.returncode:
            problems.append(f"CLI delete {name!r}: {r.stderr.strip()}")
    r = run_vdisk("snapshot", "list", disk, "--json")
    if r.stdout.strip() not in ("[]", ""):
        problems.append(f"snapshots left after deleting all: {r.stdout[:300]}")
    return problems


def check_fuse(disk: str, mp: str, names: list[str], content: dict[str, bytes]) -> list[str]:
    """Each name as the FUSE file snapshots/NAME.img of a mount."""
    problems = []
    with Mount(disk, mp) as m:
        snapdir = os.path.join(m.mp, "snapshots")
        files = sorted(os.listdir(snapdir))
        if files != sorted(n + ".img" for n in names):
            problems.append(f"FUSE lists {files}, snapshots are {names}")
        for name in names:
            try:
                with open(os.path.join(snapdir, name + ".img"), "rb") as f:
                    if f.read(BS) != content[name]:
                        problems.append(f"FUSE file {name}.img reads other data")
            except OSError as e:
                problems.append(f"FUSE file {name}.img: {e}")
    return problems
