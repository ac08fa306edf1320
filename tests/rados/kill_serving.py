"""The serving side of the rados kill test (test_kill_serving.py): a real
``vdisk serve rados:POOL/NAME`` in its own process group, driven over NBD
and its control socket, killed with the group, and the model of what may
survive.

Reused from the torture suite (tests/torture, imported, not copied): the
operation stream and its model (``powercut_model``: writes of every
alignment, zeroes, trims, flushes, snapshot create/delete/revert, compact,
big deletions), the NBD + control client that applies it
(``powercut_serve.Server.apply``) and the time budget (``Budget`` and
``TOTAL_WEIGHT`` of tests/torture/conftest.py, so ``VDISK_TORTURE_MINUTES``
and ``VDISK_TORTURE_SEED`` mean here what they mean there).

What is new here: the server is started with ``start_new_session`` and
killed with ``killpg(SIGKILL)`` (``vdisk serve`` and its nbdkit together,
as a host's death would), it takes over with ``--break-lock`` under a
chosen Ceph client identity, one-block bursts go out with libnbd's aio
(many writes in flight at the kill), and :class:`Tracker` follows the
stream as the client sees it complete, so the check knows exactly what
was acknowledged by a completed flush.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORTURE = os.path.join(os.path.dirname(_HERE), "torture")
if _TORTURE not in sys.path:
    sys.path.append(_TORTURE)            # appended: nothing here can shadow another module

import powercut_model as pm  # noqa: E402
import powercut_serve  # noqa: E402

from vdisk.errors import Busy  # noqa: E402

READY_SECONDS = 60
AIO_DEPTH = 16


def _torture_conftest():
    """tests/torture/conftest.py as a plain module (its Budget and TOTAL_WEIGHT).

    Loaded by path under a name of its own: it is not a conftest of
    tests/rados, and importing it as ``conftest`` would clash with ours.
    """
    name = "_vdisk_torture_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(_TORTURE, "conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod          # before it runs: its dataclass looks itself up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


def budget(short_seconds: float, short_rounds: int, weight: float):
    """The torture suite's budget: the short fixed-seed version, or with
    ``VDISK_TORTURE_MINUTES`` set, ``weight / TOTAL_WEIGHT`` of those minutes
    (this test is not in TOTAL_WEIGHT: it adds its share to a run), and
    never less than the short version."""
    tc = _torture_conftest()
    seed = int(os.environ.get("VDISK_TORTURE_SEED", "1"))
    minutes = os.environ.get("VDISK_TORTURE_MINUTES")
    if minutes:
        share = float(minutes) * 60 * weight / tc.TOTAL_WEIGHT
        return tc.Budget(max(share, short_seconds), 10**9, seed, True)
    return tc.Budget(short_seconds, short_rounds, seed, False)


def report_figures(nodeid: str, figures: dict) -> None:
    """As the torture suite's ``torture_figures``: a JSON line in VDISK_TORTURE_REPORT."""
    report = os.environ.get("VDISK_TORTURE_REPORT")
    line = {"test": nodeid, **figures}
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")
    print("\nfigures:", json.dumps(figures))


def stream(seed: int, size: int, bs: int, names, bursts: float = 0.06, big_delete: float = 0.02,
           compact: float = 0.2):
    """powercut_model's stream, with one-block bursts (sent with aio) mixed in,
    and only a share ``compact`` of its compacts: on RADOS one costs 0.1-1.5 s
    (a write to each data object holding free blocks), which would leave the
    short run few other operations to be killed in."""
    import random
    rng = random.Random(seed ^ 0x5EED)
    nblocks = size // bs
    for op in pm.operations(seed, size, bs, names, big_delete=big_delete):
        if op[0] == "compact" and rng.random() >= compact:
            continue
        if rng.random() < bursts:
            n = rng.randrange(8, 97)
            stride = rng.choice([1, 2, 3, 7])
            b0 = rng.randrange(nblocks - stride * n)
            yield ("scatter", b0, stride, n, rng.getrandbits(48))
        yield op


class Group:
    """Every serving process group the test started; killed at teardown if alive."""

    def __init__(self):
        self.servers: list[RadosServer] = []

    def kill_all(self):
        for s in self.servers:
            s.stop_leftover()


class RadosServer(powercut_serve.Server):
    """``vdisk --ceph-conf C --ceph-id ID serve rados:POOL/NAME --json [--break-lock]``.

    Its own session (process group = the serve's PID), so :meth:`kill`
    takes ``vdisk serve`` and nbdkit in one ``killpg``. The NBD socket and
    the control socket are in the disk's local state directory.
    """

    def __init__(self, ceph, disk: str, client: str, log: str, group: Group, break_lock: bool = False):
        self.disk = None                   # the state directory, from the socket (find_server's key)
        self.h = self.ctl = None
        self.nbdkit_pid = None
        self.client = client
        self.killed = False
        argv = [sys.executable, "-m", "vdisk.cli.main", "--ceph-conf", ceph.conf, "--ceph-id", client,
                "serve", disk, "--json"] + (["--break-lock"] if break_lock else [])
        err = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                     start_new_session=True)
        err.close()
        self.pgid = self.proc.pid
        group.servers.append(self)
        self.log = log
        line = self._first_line()
        try:
            self.event = json.loads(line)
        except ValueError:
            raise AssertionError(f"vdisk serve printed {line!r}: {self._tail()}") from None
        self.nbdkit_pid = self.event["pid"]
        self.sock = self.event["socket"]
        self.disk = os.path.dirname(self.sock)
        self.connect()

    def _tail(self) -> str:
        with open(self.log, "rb") as f:
            return f.read()[-1500:].decode(errors="replace")

    def _first_line(self) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_SECONDS
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"vdisk serve did not start serving in {READY_SECONDS} s: {self._tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=30)
                    raise AssertionError(f"vdisk serve exited {self.proc.returncode}: {self._tail()}")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def handle(self, export: str = ""):
        nbd = powercut_serve.import_nbd()
        h = nbd.NBD()
        h.set_export_name(export)
        h.connect_unix(self.sock)
        return h

    def apply(self, op, bs: int):
        kind = op[0]
        if kind == "scatter":
            self._burst(op, bs)
        elif kind == "delete":
            self._until_not_busy(lambda: self.control().delete_snapshot(op[1]))
        elif kind == "revert":
            self.disconnect()              # the server refuses a revert under a connected client
            try:
                self._until_not_busy(lambda: self.control().revert(op[1]))
            finally:
                self.connect()
        else:
            super().apply(op, bs)

    def _until_not_busy(self, call):
        """``call()``, again while the server answers Busy, for at most 10 s.

        nbdkit counts a connection closed a moment after its client closed
        it (the revert's own, the check's snapshot exports), and refuses a
        revert or a deletion until then. A dead server's control client
        raises Busy too ("stopped answering"): no retry once it is killed.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                return call()
            except Busy:
                if self.killed or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _burst(self, op, bs: int):
        """n one-block writes, up to AIO_DEPTH of them in flight at once."""
        nbd = powercut_serve.import_nbd()
        _, b0, stride, n, dseed = op
        data = pm.data_of(dseed, n * bs)
        h = self.h
        pending = []
        for k in range(n):
            while h.aio_in_flight() >= AIO_DEPTH:
                h.poll(-1)
            buf = nbd.Buffer.from_bytearray(bytearray(data[k * bs:(k + 1) * bs]))
            pending.append((h.aio_pwrite(buf, (b0 + k * stride) * bs), buf))
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for cookie, _buf in pending:
            h.aio_command_completed(cookie)          # raises nbd.Error for a failed write

    def flush_then_kill(self, delay: float) -> bool:
        """An NBD flush, and ``delay`` seconds after sending it the group's SIGKILL:
        inside the flush when the delay is shorter than it. True if the
        server acknowledged the flush before it died (then it is a completed
        commit: everything before it must be there)."""
        nbd = powercut_serve.import_nbd()
        h = self.h
        cookie = h.aio_flush()
        end = time.perf_counter() + delay
        while time.perf_counter() < end:        # spin: sleep() is too coarse for a 1 ms commit
            pass
        self.signal_kill()
        try:
            while not h.aio_command_completed(cookie):
                h.poll(-1)
        except nbd.Error:
            return False
        return True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_kill(self):
        """SIGKILL to the whole group (from any thread; reaping is :meth:`kill`'s).

        The group leader (``vdisk serve``) is not reaped before this, so its
        PID, the group's id, cannot have been reused.
        """
        self.killed = True
        if self.proc.returncode is None:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self):
        """The host dies: SIGKILL to the whole group, then reap; nbdkit gone too."""
        self.signal_kill()
        self._close_clients()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        # nbdkit was the serve's child: reparented and reaped by init.
        if not _wait_gone(self.nbdkit_pid, 30):
            raise AssertionError(f"nbdkit {self.nbdkit_pid} survived SIGKILL of its process group")

    def stop_leftover(self):
        """Teardown: whatever of this server still runs is killed, and only that."""
        if self.proc.returncode is None:
            self.kill()
        elif self.nbdkit_pid is not None and not _wait_gone(self.nbdkit_pid, 0):
            try:
                if os.getpgid(self.nbdkit_pid) == self.pgid:
                    os.kill(self.nbdkit_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> int:
        """A clean stop (SIGINT, as Ctrl-C): flush, unlock, exit 0."""
        self._close_clients()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("vdisk serve did not stop within 60 s of SIGINT") from None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _wait_gone(pid, seconds: float) -> bool:
    if pid is None:
        return True
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


class Tracker:
    """What the disk may hold, followed as the client sees each operation complete.

    ``done(op)`` after an operation returned, ``in_flight(op)`` for the one
    that failed at the kill (it may have landed in part). A completed
    commit operation (flush, snapshot create/delete, revert) makes its state
    the base: every block must read as there, or as in a later state up to
    the end of the operation in flight (``powercut_model.Allowed``, block
    by block); its snapshots must exist and read as when taken.
    """

    def __init__(self, model: bytes, snaps: dict, bs: int):
        self.bs = bs
        self.nblocks = len(model) // bs
        self.m = bytearray(model)
        self.s = dict(snaps)
        self.allowed = pm.Allowed(bytes(model), bs)
        self.required = set(snaps)
        self.snaps = dict(snaps)         # every snapshot that may exist, as taken
        self.ops: list[tuple] = []
        self.commit = -1                 # index of the last completed commit op
        self.writer: dict[int, int] = {}  # block -> index of the last op that changed it
        self.durable_writes = 0
        self._writes = 0
        self.flight = None

    def _apply(self, op):
        i = len(self.ops)
        self.ops.append(op)
        self.m = pm.apply(op, self.m, self.s, self.bs)
        blocks = pm.touched(op, self.bs, self.nblocks)
        for b in (range(self.nblocks) if blocks is None else blocks):
            self.writer[b] = i
        if op[0] in ("write", "zero", "trim"):
            self._writes += 1
        elif op[0] == "scatter":
            self._writes += op[3]
        return i, blocks

    def done(self, op):
        i, blocks = self._apply(op)
        if op[0] in pm.COMMIT_OPS:
            self.commit = i
            self.allowed = pm.Allowed(bytes(self.m), self.bs)
            self.required = set(self.s)
            self.snaps = dict(self.s)
            self.durable_writes = self._writes
        else:
            self.allowed.add(self.m, blocks)

    def in_flight(self, op):
        self.flight = op
        _i, blocks = self._apply(op)
        self.allowed.add(self.m, blocks)
        self.snaps.update(self.s)
        if op[0] == "delete":
            self.required.discard(op[1])

    def describe(self, bad: list[int], got: bytes) -> str:
        bs, out = self.bs, []
        for b in bad[:8]:
            chunk = got[b * bs:(b + 1) * bs]
            what = "zeros" if chunk == bytes(bs) else "other data"
            w = self.writer.get(b)
            if w is None:
                out.append(f"block {b}: reads {what}; not written this round")
            else:
                when = "before" if w <= self.commit else "after"
                out.append(f"block {b}: reads {what}; last written by op {w} {self.ops[w][:3]}, "
                           f"{when} the last completed commit (op {self.commit})")
        return "; ".join(out)
