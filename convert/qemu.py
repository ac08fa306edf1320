"""The qemu tools as vdisk uses them: qemu-img for facts, qemu-nbd for bytes.

vdisk never parses an image format itself. ``qemu-img info`` and ``qemu-img
map`` (JSON) say what a chain holds; the bytes are read (and, for export,
written) through a qemu-nbd export on a private unix socket with libnbd.
Every failure becomes one :class:`ImageError` line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from vdisk.errors import ImageError, NoSpace

# qemu-img map of a large, fragmented image prints one JSON object per
# extent; its whole output is held at once, so bound the time, not the size.
QEMU_IMG_TIMEOUT = 600
NBD_START_TIMEOUT = 20.0
DEPTH_CONTEXT = "qemu:allocation-depth"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"{name} is not installed (Debian package qemu-utils); ./dev setup installs it")
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "no message"
    # qemu prefixes its messages with its own name; ours names the tool already.
    for prefix in ("qemu-img: ", "qemu-nbd: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return line


def qemu_img(*args: str, what: str) -> str:
    """Run qemu-img; its stdout, or ImageError with qemu's last line."""
    try:
        r = subprocess.run([_tool("qemu-img"), *args], capture_output=True, text=True,
                           timeout=QEMU_IMG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: qemu-img {args[0]} did not finish in {QEMU_IMG_TIMEOUT} s") from None
    if r.returncode != 0:
        raise ImageError(f"{what}: {_last_line(r.stderr)}")
    return r.stdout


def qemu_img_json(*args: str, what: str):
    out = qemu_img(*args, "--output=json", what=what)
    try:
        return json.loads(out)
    except ValueError:
        raise ImageError(f"{what}: qemu-img printed no JSON") from None


def _qemu_env() -> dict:
    """qemu-nbd's environment: glibc told to keep request buffers on its heap.

    qemu-nbd allocates a buffer per request; glibc maps each one of our
    4 MiB reads fresh and unmaps it after, so every read faulted in 1,024
    new pages (285k faults per 1.5 GB in the convert benchmark, a third of
    all CPU in qemu-nbd's kernel time). Above the request size, the heap is
    reused: a 1 GiB import went from 2.2 s to 1.8 s (median of 4 alternated
    runs; qemu-img convert -O raw: 0.64 s). A user's own setting wins.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 << 20))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 << 20))
    return env


def load_nbd():
    """Debian's libnbd binding (python3-libnbd; ./dev setup links it into the venv)."""
    try:
        import nbd
    except ImportError:
        raise ImageError("the libnbd Python binding is missing (Debian package python3-libnbd); "
                           "./dev setup installs it") from None
    return nbd


class Export:
    """One image served by qemu-nbd on a private socket, connected with libnbd.

    ``read_only`` exports refuse writes in qemu itself; ``snapshot`` loads an
    internal snapshot (qcow2) instead of the image's current state. Use as a
    context manager: qemu-nbd is stopped and the socket removed on exit.
    """

    def __init__(self, path: str, fmt: str, *, read_only: bool = True, snapshot: str | None = None,
                 depth: bool = False, what: str | None = None):
        self.path = path
        self.what = what or path
        nbd = load_nbd()
        # Writes (export) keep mapped zero blocks sparse; flush makes them durable.
        cmd = [_tool("qemu-nbd"), "--format", fmt, "--cache", "writeback",
               "--aio", "threads", "--discard", "unmap", "--detect-zeroes", "off" if read_only else "unmap"]
        if read_only:
            cmd.append("--read-only")
        if depth:
            cmd.append("--allocation-depth")
        if snapshot is not None:
            # An option string: a comma in the name is written twice.
            cmd += ["--load-snapshot", f"snapshot.name={snapshot.replace(',', ',,')}"]
        cmd.append(path)
        self._log = tempfile.TemporaryFile("w+")      # qemu-nbd's messages, nameless
        self.h = None
        self._proc = None
        self._watch = None
        try:
            client = self._spawn(cmd)
            self.h = nbd.NBD()
            self.h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            if depth:
                self.h.add_meta_context(DEPTH_CONTEXT)
            try:
                self.h.connect_socket(client.detach())
            except nbd.Error:
                self._proc.wait(NBD_START_TIMEOUT)
                self._log.seek(0)
                raise ImageError(f"{self.what}: {_last_line(self._log.read())}") from None
        except BaseException:
            self.close()
            raise
        self.size = self.h.get_size()

    def _spawn(self, cmd: list[str]) -> socket.socket:
        """Start qemu-nbd socket-activated on a listening socket this process
        is already connected to; returns the connected end.

        qemu-nbd serves that one client and exits when it leaves - but only
        once the NBD handshake is done, so a server whose client died before
        it (this process SIGKILLed right after the spawn) would wait for
        ever. So it runs under a small bash watchdog that reads a pipe only
        this process writes: when this process dies, however, the read ends
        and the watchdog stops qemu-nbd, with SIGKILL if SIGTERM has not
        ended it in 2 s (a qemu-nbd whose client is mid-request was seen
        to outlive SIGTERM under load). No socket file outlives this call.
        """
        d = tempfile.mkdtemp(prefix="vdisk-qemu-nbd-")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        watch_r, self._watch = os.pipe()
        try:
            path = os.path.join(d, "sock")
            listener.bind(path)
            listener.listen(1)
            client.connect(path)
            fd = listener.fileno()
            # systemd's protocol: the listening socket is fd 3 and LISTEN_PID
            # the server's own (bash: dash cannot name a descriptor past 9).
            # It ends with qemu-nbd, passing on its status.
            shell = (f'( export LISTEN_PID=$BASHPID LISTEN_FDS=1; exec "$@" 3<&{fd} {watch_r}<&- ) & q=$!; '
                     f'( read -r -u {watch_r} _; kill $q 2>/dev/null; sleep 2; kill -9 $q 2>/dev/null ) & w=$!; '
                     f'trap "kill $q 2>/dev/null" TERM; wait $q; s=$?; kill $w 2>/dev/null; exit $s')
            self._proc = subprocess.Popen(["/bin/bash", "-c", shell, "bash", *cmd], stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=self._log, pass_fds=(fd, watch_r),
                                          start_new_session=True, env=_qemu_env())
        except BaseException:
            client.close()
            os.close(self._watch)
            self._watch = None
            raise
        finally:
            os.close(watch_r)
            listener.close()
            shutil.rmtree(d, ignore_errors=True)
        return client

    def pread(self, length: int, offset: int) -> bytes:
        nbd = load_nbd()
        try:
            return self.h.pread(length, offset)
        except nbd.Error as e:
            raise ImageError(f"{self.what}: reading {length} bytes at {offset} failed: {e.string}") from None

    def own_ranges(self) -> list[tuple[int, int, bool]]:
        """(offset, length, data) of the ranges the exported layer holds itself.

        From NBD block status: ``qemu:allocation-depth`` 1 is this layer
        (0 unallocated, 2 and more its backing), ``base:allocation`` says
        whether a range reads as zeros. Needs ``depth=True``.
        """
        nbd = load_nbd()
        out: list[tuple[int, int, bool]] = []
        pos = 0
        while pos < self.size:
            got: dict[str, list[tuple[int, int]]] = {}

            def cb(ctx, off, entries, err, got=got):
                got[ctx] = [(entries[i], entries[i + 1]) for i in range(0, len(entries), 2)]
                return 0
            try:
                self.h.block_status(min(self.size - pos, 1 << 30), pos, cb)
            except nbd.Error as e:
                raise ImageError(f"{self.what}: block status at {pos} failed: {e.string}") from None
            depth = got.get(DEPTH_CONTEXT)
            alloc = got.get(nbd.CONTEXT_BASE_ALLOCATION)
            if not depth or not alloc:
                raise ImageError(f"{self.what}: qemu-nbd gave no allocation depth")
            end = pos + min(sum(n for n, _ in depth), sum(n for n, _ in alloc))
            for a, b, d, flags in _overlay(pos, depth, alloc):
                if b > end:
                    b = end
                if a >= b or d != 1:
                    continue
                data = not flags & nbd.STATE_ZERO
                if out and out[-1][2] == data and out[-1][0] + out[-1][1] == a:
                    out[-1] = (out[-1][0], out[-1][1] + b - a, data)
                else:
                    out.append((a, b - a, data))
            pos = end
        return out

    def zero_ranges(self) -> list[tuple[int, int]]:
        """(begin, end) of the ranges qemu knows read as zeros (base:allocation)."""
        nbd = load_nbd()
        out: list[tuple[int, int]] = []
        pos = 0
        while pos < self.size:
            got: list[tuple[int, int]] = []

            def cb(ctx, off, entries, err, got=got):
                if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                    got.extend((entries[i], entries[i + 1]) for i in range(0, len(entries), 2))
                return 0
            try:
                self.h.block_status(min(self.size - pos, 1 << 30), pos, cb)
            except nbd.Error as e:
                raise ImageError(f"{self.what}: block status at {pos} failed: {e.string}") from None
            if not got:
                raise ImageError(f"{self.what}: qemu-nbd gave no block status")
            for n, flags in got:
                n = min(n, self.size - pos)
                if flags & nbd.STATE_ZERO:
                    if out and out[-1][1] == pos:
                        out[-1] = (out[-1][0], pos + n)
                    else:
                        out.append((pos, pos + n))
                pos += n
        return out

    def _write_error(self, e, doing: str):
        # A full file system under the image is the user's to fix, with the
        # exit code every command gives it (NoSpace), not a bad image.
        if getattr(e, "errnum", None) == errno.ENOSPC:      # (its .errno is the name, "ENOSPC")
            return NoSpace(f"{self.what}: no space left on the file system ({doing})")
        return ImageError(f"{self.what}: {doing} failed: {e.string}")

    def pwrite(self, data, offset: int) -> None:
        nbd = load_nbd()
        try:
            self.h.pwrite(data, offset)
        except nbd.Error as e:
            raise self._write_error(e, f"writing {len(data)} bytes at {offset}") from None

    def zero(self, length: int, offset: int) -> None:
        nbd = load_nbd()
        try:
            self.h.zero(length, offset)
        except nbd.Error as e:
            raise self._write_error(e, f"zeroing {length} bytes at {offset}") from None

    def flush(self) -> None:
        nbd = load_nbd()
        try:
            self.h.flush()
        except nbd.Error as e:
            raise self._write_error(e, "flush") from None

    def close(self) -> None:
        if self.h is not None:
            with contextlib.suppress(Exception):
                self.h.shutdown()
            with contextlib.suppress(Exception):
                self.h.close()
            self.h = None
        if self._watch is not None:
            os.close(self._watch)           # the watchdog stops qemu-nbd if it still runs
            self._watch = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _overlay(start: int, first: list[tuple[int, int]], second: list[tuple[int, int]]):
    """Walk two block-status replies together: (begin, end, flags1, flags2)."""
    i = j = 0
    pos = start
    end1 = start + first[0][0]
    end2 = start + second[0][0]
    while i < len(first) and j < len(second):
        end = min(end1, end2)
        yield pos, end, first[i][1], second[j][1]
        pos = end
        if end == end1:
            i += 1
            if i < len(first):
                end1 += first[i][0]
        if end == end2:
            j += 1
            if j < len(second):
                end2 += second[j][0]
