"""Helpers for the NBD tests: a served disk, real clients, patterns.

Every server is the real CLI in a subprocess (so tests also cover argument
handling, readiness, signals and cleanup); every client is a real NBD client
(libnbd's Python module, qemu-io, qemu-img, nbdcopy, nbdinfo, fio). Teardown
stops the server with SIGTERM, as Ctrl-C would, kills it if it hangs, and
checks that it left no socket behind.

libnbd's Python module comes only from Debian (python3-libnbd); its directory
is appended to sys.path (never prepended, so it cannot shadow the venv's
packages).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
TOOLS = ("nbdkit", "qemu-io", "qemu-img", "nbdcopy", "nbdinfo", "fio")
MiB = 1 << 20


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if "nbdkit" not in missing and subprocess.run(["nbdkit", "python", "--version"],
                                                  capture_output=True).returncode != 0:
        missing.append("nbdkit-plugin-python")
    if not os.path.exists(os.path.join(DEBIAN_DIST, "nbd.py")):
        missing.append("python3-libnbd")
    return missing


def import_nbd():
    if DEBIAN_DIST not in sys.path:
        sys.path.append(DEBIAN_DIST)
    import nbd
    return nbd


def vdisk_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vdisk.cli.main", *args]


def run_vdisk(*args, check=True, timeout=60) -> subprocess.CompletedProcess:
    r = subprocess.run(vdisk_cmd(*args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"vdisk {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Served:
    """One running ``vdisk serve`` and the URIs it printed."""

    def __init__(self, disk: str, args=(), env=None):
        self.disk = disk
        self.socket = os.path.join(disk, "nbd.sock")
        self.args = list(args)
        self.proc = subprocess.Popen(vdisk_cmd("serve", disk, *self.args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.banner = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                _, err = self.proc.communicate(timeout=30)
                raise AssertionError(f"vdisk serve exited {self.proc.returncode}: {err.strip()}")
            self.banner.append(line.rstrip("\n"))
            if line.startswith("snapshots taken while serving"):
                break
        else:
            self.stop()
            raise AssertionError("vdisk serve printed no banner in 30 s")
        self.stdout_rest = None
        self.stderr = None

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.socket}"

    def connect(self, export: str = ""):
        nbd = import_nbd()
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.set_export_name(export)
        h.connect_unix(self.socket)
        return h

    def stop(self, sig=signal.SIGTERM, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout_rest, self.stderr = out, err
        return self.proc.returncode


def pattern(seed: int, length: int) -> bytes:
    """Distinct, recognisable bytes for a write: the seed repeated as 8-byte words."""
    word = seed.to_bytes(8, "little")
    return (word * (length // 8 + 1))[:length]


def nbdkit_argv(disk: str, sock: str) -> list[str]:
    """nbdkit with the vdisk plugin, started by hand (past vdisk serve's checks)."""
    from vdisk.nbdplugin import nbdkit_command
    return nbdkit_command(disk, socket=sock)


def nbdkit_env() -> dict:
    from vdisk.nbdplugin import nbdkit_env as env
    return env()
