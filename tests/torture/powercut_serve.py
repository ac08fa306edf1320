"""``vdisk serve`` for the power-cut and fault tests: start it, drive it, kill it.

The server is the real CLI (``vdisk serve DISK --socket S``, the NBD socket
outside the file system under test; the control socket stays at
DISK/control.sock, inside it); the client is libnbd's Python module for
I/O and the control socket's client for snapshot operations, both in the
test process. A power cut kills nbdkit (the PID its banner names) with
SIGKILL, as the machine's death would, then reaps ``vdisk serve``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import powercut_model as pm

DEBIAN_DIST = "/usr/lib/python3/dist-packages"


def import_nbd():
    # Debian's python3-libnbd only; appended, so it cannot shadow the venv.
    if DEBIAN_DIST not in sys.path:
        sys.path.append(DEBIAN_DIST)
    import nbd
    return nbd


def missing() -> list[str]:
    import shutil
    out = [] if shutil.which("nbdkit") else ["nbdkit"]
    if not os.path.exists(os.path.join(DEBIAN_DIST, "nbd.py")):
        out.append("python3-libnbd")
    return out


class Server:
    """One ``vdisk serve`` and a connection to its running point."""

    def __init__(self, disk: str, sock: str, log: str, processes: list):
        self.disk, self.sock = disk, sock
        self.nbdkit_pid = None
        self.h = None
        self.ctl = None
        err = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "vdisk.cli.main", "serve", disk, "--socket", sock],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        processes.append(self.proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                with open(log, "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                raise AssertionError(f"vdisk serve exited {self.proc.returncode}: {tail}")
            m = re.search(r"nbdkit PID (\d+)", line)
            if m:
                self.nbdkit_pid = int(m.group(1))
            if line.startswith("snapshots taken while serving"):
                break
        else:
            raise AssertionError("vdisk serve printed no banner in 60 s")
        self.connect()

    def connect(self):
        nbd = import_nbd()
        self.h = nbd.NBD()
        self.h.connect_unix(self.sock)

    def disconnect(self):
        if self.h is not None:
            try:
                self.h.shutdown()
            except Exception:     # a dead server: nothing to say goodbye to
                pass
            del self.h            # libnbd closes the handle when it is collected
            self.h = None

    def control(self):
        from vdisk.control.client import find_server
        if self.ctl is None:
            self.ctl = find_server(self.disk)
            assert self.ctl is not None, "the control socket of vdisk serve is not there"
        return self.ctl

    def apply(self, op, bs: int):
        """One operation of powercut_model's stream; raises nbd.Error or a VdiskError."""
        kind = op[0]
        h = self.h
        if kind == "write":
            h.pwrite(pm.data_of(op[3], op[2]), op[1])
        elif kind == "zero":
            h.zero(op[2], op[1])
        elif kind == "trim":
            h.trim(op[2], op[1])
        elif kind == "scatter":
            _, b0, stride, n, dseed = op
            data = pm.data_of(dseed, n * bs)
            for k in range(n):
                h.pwrite(data[k * bs:(k + 1) * bs], (b0 + k * stride) * bs)
        elif kind == "flush":
            h.flush()
        elif kind == "snap":
            self.control().create_snapshot(op[1])
        elif kind == "delete":
            self.control().delete_snapshot(op[1])
        elif kind == "revert":
            # The server refuses a revert under a connected client.
            from vdisk.errors import Busy
            self.disconnect()
            try:
                # nbdkit counts the connection closed a moment after the client did.
                deadline = time.monotonic() + 10
                while True:
                    try:
                        self.control().revert(op[1])
                        break
                    except Busy:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
            finally:
                self.connect()
        elif kind == "compact":
            self.control().compact()

    def kill(self):
        """The machine dies: nbdkit by SIGKILL, then reap vdisk serve."""
        if self.nbdkit_pid is not None:
            try:
                os.kill(self.nbdkit_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close_clients()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def stop(self):
        """A clean stop (SIGTERM): the server flushes and releases the disk."""
        self._close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc.stdout.close()
        return self.proc.returncode

    def _close_clients(self):
        self.disconnect()
        if self.ctl is not None:
            try:
                self.ctl.close()
            except Exception:
                pass
            self.ctl = None
