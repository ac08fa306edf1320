"""A served disk for the load and bad-input torture tests, and the CLI.

The server is the real ``vdisk serve`` in a subprocess and every client a
real one (libnbd's Python module, the ``vdisk`` command). Its stderr goes to
a file, not a pipe: the fuzzers make nbdkit log one line per refused
request, and a pipe nobody reads would fill up and stall the server - a
hang the watchdog would then blame on the disk.

libnbd's Python module comes only from Debian (python3-libnbd); its
directory is appended to sys.path, never prepended, so it cannot shadow the
venv's packages.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
MiB = 1 << 20


def missing_tools() -> list[str]:
    missing = [t for t in ("nbdkit",) if shutil.which(t) is None]
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


def run_vdisk(*args, check=True, timeout=120, stdin=None) -> subprocess.CompletedProcess:
    r = subprocess.run(vdisk_cmd(*args), capture_output=True, text=True, timeout=timeout,
                       stdin=stdin if stdin is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"vdisk {' '.join(map(repr, args))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# Exit codes of a clean refusal (vdisk/errors.py: usage, not found, ... storage
# failed); 70 is the CLI's "internal error", a bug.
REFUSED = range(2, 11)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The CLI's error, asserting it is one line and no traceback."""
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr, f"raw traceback from the CLI:\n{r.stderr}"
    assert "internal error" not in r.stderr, f"the CLI met a bug: {r.stderr}"
    assert err and "\n" not in err, f"expected one error line, got {r.stderr!r}"
    return err


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Server:
    """One running ``vdisk serve DISK [args]``; stop() is safe to call twice."""

    def __init__(self, disk: str, *args: str, log_dir: str, sock: str | None = None):
        self.disk = disk
        self.socket = sock or os.path.join(disk, "nbd.sock")
        argv = list(args) + (["--socket", sock] if sock else [])
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"serve-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(vdisk_cmd("serve", disk, *argv), stdout=subprocess.PIPE,
                                     stderr=self._log, stdin=subprocess.DEVNULL, text=True)
        self.nbdkit_pid = None
        banner = []
        deadline = time.monotonic() + 60
        try:
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    self.proc.wait(timeout=60)
                    raise AssertionError(f"vdisk serve exited {self.proc.returncode}: {self.log().strip()}")
                banner.append(line)
                m = re.search(r"nbdkit PID (\d+)", line)
                if m:
                    self.nbdkit_pid = int(m.group(1))
                if line.startswith("snapshots taken while serving"):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("vdisk serve printed no banner in 60 s")
        except BaseException:
            self.stop()
            raise
        self.banner = "".join(banner)

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def running(self) -> bool:
        return self.proc.poll() is None and (self.nbdkit_pid is None or alive(self.nbdkit_pid))

    def connect(self, export: str = "", strict: bool = True):
        nbd = import_nbd()
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if not strict:
            # Let odd requests reach the server instead of being refused by libnbd.
            h.set_strict_mode(0)
        h.set_export_name(export)
        h.connect_unix(self.socket)
        return h

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (as Ctrl-C would), then SIGKILL of our own child if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.flush()
        return self.proc.returncode


def close_handle(h):
    """Disconnect politely when the connection is still up; never raise."""
    try:
        h.shutdown()
    except Exception:
        pass
    try:
        h.close()
    except Exception:
        pass


def read_all(h, size: int, chunk: int = 4 * MiB) -> bytes:
    return b"".join(bytes(h.pread(min(chunk, size - o), o)) for o in range(0, size, chunk))
