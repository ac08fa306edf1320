"""A lazy file system for power-cut and fault tests (the idea of LazyFS).

:class:`LazyMount` mounts lazyfs_server.py (FUSE, its own process) over a
backing directory. What it does to what passes through:

* **Data.** A write is kept in the server's memory, in 4 KiB pages, until
  the file is fsynced or fdatasynced; then the dirty pages go to the
  backing directory, which stands for stable storage. A :meth:`cut` (power
  cut) writes back a random, seeded subset of each file's dirty pages, may
  extend a file to its written size without the data (zeros, as a size
  update that reached the journal before its data would), and forgets the
  rest.
* **Directory entries.** Files, directories and sockets created, and
  renames, are durable only after an fsync of their parent directory; a cut
  loses each one that is not with probability ``lose`` (a lost directory
  takes its contents with it; a lost rename is undone). Unlinks, rmdirs and
  shrinking truncates are durable at once (nothing here depends on losing
  them).
* **Faults** (:meth:`fault`): on ``write`` (``eio``, ``enospc``, ``short``:
  half the bytes written and reported), ``fsync`` (``eio``/``enospc``; the
  file's dirty pages are dropped, as Linux marks pages whose write-back
  failed clean, so the next fsync succeeds - the PostgreSQL fsync failure of
  2018), ``read``, ``create`` and ``fsyncdir``; ``cut`` on any of them cuts
  the power at that very request. A rule selects files by an fnmatch
  pattern on the path inside the mount, skips the first ``skip`` matches,
  then fires on every ``every``-th, at most ``count`` times (0: always).

After a cut every request fails with EIO. :meth:`remount` unmounts the dead
server and mounts a fresh one over the same backing directory: the only
robust way to empty the kernel's page cache of the mount, which would
otherwise still serve the dropped data.

What works on it, and what does not (found with the engine's test runs):

* LMDB as vdisk uses it: ``meta/data.mdb`` written with pwrite (and the
  meta page through a second O_DSYNC descriptor, which the kernel turns
  into an fsync per write), read through a shared read-only mmap;
  ``meta/lock.mdb`` through a shared writable mmap, whose pages the kernel
  writes back whenever it likes (LMDB never syncs it and rebuilds it when
  it opens an environment nobody else holds). POSIX and flock locks are
  the kernel's local ones (the server implements neither), which is right
  for one machine.
* Hole punching (``fallocate``) through vdisk.fusefs.lowlevel's handler
  table patch: a punch zeroes the range, durable at the next fsync like a
  write. SEEK_DATA/SEEK_HOLE report the whole file as data (correct, and
  all the engine needs).
* Not modelled: page cache pressure (nothing is written back before an
  fsync unless the harness syncs), sub-page tearing, reordering of
  metadata between files (a cut treats every file independently), hard
  links (refused), xattrs.

The ``vdisk`` processes under test, and this process, must not hold files
on the mount when it is remounted: kill them (by PID) first.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyfs_server.py")
READY_TIMEOUT = 20.0


def is_mounted(mountpoint: str) -> bool:
    mp = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mp for line in f)


def missing() -> list[str]:
    import shutil
    out = [] if shutil.which("fusermount3") else ["fusermount3"]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        out.append("/dev/fuse (read-write)")
    return out


class LazyMount:
    """One lazy file system over ``backing`` at ``mountpoint``; remountable."""

    def __init__(self, backing: str, mountpoint: str, control: str, seed: int = 1):
        self.backing = backing
        self.mountpoint = mountpoint
        self.control_path = control
        self.seed = seed
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self._conn = None
        self._conn_lock = threading.Lock()     # a timer thread may cut while the test runs
        self.log_path = control + ".log"
        # Summed over every server generation (each remount starts at zero).
        self.totals: dict[str, int] = {}
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)

    # ------------------------------------------------------------ lifecycle

    def mount(self):
        assert self.proc is None, "already mounted"
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        self.generation += 1
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, SERVER, self.backing, self.mountpoint, self.control_path,
                 str(self.seed * 1000 + self.generation)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lazyfs exited {self.proc.returncode}: {self._log_tail()}")
            if os.path.exists(self.control_path) and is_mounted(self.mountpoint):
                try:
                    self._request({"cmd": "ping"})
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        self.close()
        raise AssertionError(f"lazyfs did not come up in {READY_TIMEOUT} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def unmount(self):
        """Unmount and stop the server; nothing on the mount may be open."""
        if self.proc is None:
            return
        self._add_totals()
        self._disconnect()
        for args in (["-u"], ["-u", "-z"]):
            if not is_mounted(self.mountpoint):
                break
            subprocess.run(["fusermount3", *args, self.mountpoint], capture_output=True, timeout=60)
        try:
            # After a lazy unmount a file still open keeps the server busy.
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, timeout=60)

    def remount(self):
        self.unmount()
        self.mount()

    def close(self):
        """Teardown: unmount whatever state the server is in, kill it if need be."""
        try:
            self.unmount()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True, timeout=60)

    # ------------------------------------------------------------ control

    def _disconnect(self):
        if self._conn is not None:
            for part in reversed(self._conn):
                part.close()
            self._conn = None

    def _request(self, req: dict) -> dict:
        with self._conn_lock:
            return self._request_locked(req)

    def _request_locked(self, req: dict) -> dict:
        if self._conn is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(self.control_path)
            self._conn = (s, s.makefile("rwb"))
        s, stream = self._conn
        stream.write(json.dumps(req).encode() + b"\n")
        stream.flush()
        line = stream.readline()
        if not line:
            self._disconnect()
            raise OSError("lazyfs closed the control connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise AssertionError(f"lazyfs refused {req}: {reply.get('error')}")
        return reply

    def cut(self, keep: float | None = None, lose: float | None = None, grow: float | None = None) -> dict:
        """Power cut now. ``keep``: share of dirty pages written back (None:
        the server picks one of 0, .25, .5, .75, 1); ``lose``: chance that a
        non-durable directory entry is lost; ``grow``: chance that a file
        grows to its written size without the data."""
        return self._request({"cmd": "cut", "keep": keep, "lose": lose, "grow": grow})

    def fault(self, op: str, path: str, action: str, skip: int = 0, every: int = 1,
              count: int = 1, drop: bool = True) -> int:
        """Add a fault rule (see the module docstring); returns its id."""
        return self._request({"cmd": "fault", "op": op, "path": path, "action": action,
                              "skip": skip, "every": every, "count": count, "drop": drop})["id"]

    def clear_faults(self):
        self._request({"cmd": "clear"})

    def stats(self) -> dict:
        return self._request({"cmd": "stats"})

    def dead(self) -> bool:
        return self._request({"cmd": "ping"})["dead"]

    def sync(self):
        """Make everything durable, as an idle machine eventually does."""
        self._request({"cmd": "sync"})

    def fired(self, rule_id: int) -> int:
        return next(r["fired"] for r in self.stats()["rules"] if r["id"] == rule_id)

    def figures(self) -> dict:
        """Counters summed over every server generation, the current one included."""
        out = dict(self.totals)
        try:
            st = self.stats()
        except (OSError, AssertionError, ValueError):
            return out
        for k, v in st.items():
            if isinstance(v, int) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
        return out

    def _add_totals(self):
        try:
            st = self.stats()
        except (OSError, AssertionError, ValueError):
            return
        for k, v in st.items():
            if isinstance(v, int) and not isinstance(v, bool):
                self.totals[k] = self.totals.get(k, 0) + v

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
