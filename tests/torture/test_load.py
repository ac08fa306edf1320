"""Load torture: four NBD connections, live snapshot churn and verify, one model.

``vdisk serve`` exports a small disk; four threads, one multi-conn
connection each, send overlapping random I/O (see load_workers.py) checked
against an exact model of what each byte may hold (load_model.py). Meanwhile
the CLI drives the control socket: a live snapshot (checked later as a read
that happened somewhere inside the command), ``vdisk verify`` beside the
writer, ``vdisk compact``, a revert that must be refused while clients are
connected, and deletion of old snapshots. Between rounds the clients pause: the running
point is read back and becomes the exact state, a snapshot is taken whose
content is then known exactly, every snapshot is read through its export,
and now and then the disk is reverted with the clients disconnected.

A watchdog fails the run if any NBD request waits more than 5 s. At the
end the disk is flushed, the server stopped, the disk reopened with the API
and compared in full, and ``vdisk verify --data`` must be clean.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from load_model import Model
from load_serve import Server, close_handle, import_nbd, missing_tools, one_line_error, read_all, run_vdisk
from load_workers import Watchdog, Worker

MiB = 1 << 20
SIZE = 8 * MiB
HOT = 512 << 10          # most I/O lands here, so the connections overlap
CONNECTIONS = 4
MAX_SNAPSHOTS = 4
ROUND_SECONDS = 1.0      # least I/O time per round (the CLI churn may make it longer)

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")


class Churn(threading.Thread):
    """The CLI commands of one round, run while the workers write."""

    def __init__(self, disk: str, rnd: int, model: Model, snaps: list[str], rng: random.Random):
        super().__init__(name="load-churn", daemon=True)
        self.disk, self.rnd, self.model, self.snaps, self.rng = disk, rnd, model, snaps, rng
        self.problems: list[str] = []
        self.live = None              # (name, reader id, t0, t1) of the live snapshot
        self.deleted: list[str] = []
        self.timings: list[float] = []
        self.verifies = 0

    def cli(self, *args):
        t0 = time.monotonic()
        r = run_vdisk(*args, check=False, timeout=60)
        self.timings.append(time.monotonic() - t0)
        if "Traceback" in r.stderr:
            self.problems.append(f"vdisk {' '.join(args)}: raw traceback:\n{r.stderr}")
        return r

    def run(self):
        try:
            self._run()
        except Exception as e:
            self.problems.append(f"churn: {type(e).__name__}: {e}")

    def _run(self):
        name = f"live{self.rnd}"
        rid, t0 = self.model.begin_read()
        r = self.cli("snapshot", "create", self.disk, name)
        t1 = time.monotonic()
        if r.returncode:
            self.model.end_read(rid)
            self.problems.append(f"live snapshot create {name}: exit {r.returncode}: {r.stderr.strip()}")
        else:
            self.live = (name, rid, t0, t1)
        args = ["verify", self.disk] + (["--data"] if self.rnd % 2 else [])
        r = self.cli(*args)
        self.verifies += 1
        if r.returncode:
            self.problems.append(f"vdisk {' '.join(args[:1] + args[2:])} beside the writer: exit "
                                 f"{r.returncode}: {r.stdout.strip()[-2000:]} {r.stderr.strip()[-2000:]}")
        if self.rnd % 2 == 0:
            r = self.cli("compact", self.disk)
            if r.returncode:
                self.problems.append(f"live compact: exit {r.returncode}: {r.stderr.strip()}")
        if self.snaps:
            r = self.cli("snapshot", "revert", self.disk, self.rng.choice(self.snaps))
            if r.returncode != 5 or "connection" not in r.stderr:
                self.problems.append(f"revert with clients connected: exit {r.returncode} (want 5, busy): "
                                     f"{r.stderr.strip()}")
            else:
                one_line_error(r)
        while len(self.snaps) - len(self.deleted) > MAX_SNAPSHOTS:
            victim = self.snaps[len(self.deleted)]
            r = self.cli("snapshot", "delete", self.disk, victim)
            if r.returncode:
                self.problems.append(f"live delete {victim}: exit {r.returncode}: {r.stderr.strip()}")
                return
            self.deleted.append(victim)


def _check_snapshots(srv: Server, expected: dict[str, bytes]) -> list[str]:
    problems = []
    for name, want in expected.items():
        h = srv.connect(name)
        try:
            got = read_all(h, SIZE)
        finally:
            close_handle(h)
        if got != want:
            bad = next(i for i in range(SIZE) if got[i] != want[i])
            problems.append(f"snapshot {name} differs from its state when taken, first at byte {bad}")
    return problems


def _revert(disk: str, name: str):
    # The server notices disconnects asynchronously: a refusal right after
    # closing the handles is expected, a lasting one is not.
    for _ in range(50):
        r = run_vdisk("snapshot", "revert", disk, name, check=False)
        if r.returncode != 5:
            break
        time.sleep(0.1)
    assert r.returncode == 0, f"revert to {name} with no client connected: exit {r.returncode}: {r.stderr}"


def test_load_multi_conn_with_snapshot_churn(tmp_path, torture_budget, torture_figures):
    budget = torture_budget(25, 8, weight=1.5, suite_share=0.5)
    rng = random.Random(budget.seed)
    disk = str(tmp_path / "d.vdisk")
    run_vdisk("create", disk, "--size", str(SIZE))
    model = Model(SIZE)
    expected: dict[str, bytes] = {}      # snapshot -> its exact content
    snaps: list[str] = []                # live ones, oldest first
    figures = dict(operations=0, bytes_written=0, bytes_checked=0, rounds=0, snapshots_created=0,
                   snapshots_deleted=0, reverts=0, verifies=0, revert_refusals=0, losses=0,
                   longest_request_s=0.0, longest_cli_s=0.0, seed=budget.seed)
    torture_figures.update(figures)
    dog = Watchdog()
    dog.start()
    srv = Server(disk, log_dir=str(tmp_path / "logs"))
    handles = []
    try:
        handles = [srv.connect() for _ in range(CONNECTIONS)]
        assert handles[0].can_multi_conn(), "vdisk serve must advertise multi-conn"
        for rnd in budget.rounds():
            stop = threading.Event()
            workers = [Worker(f"conn{i}", h, model, dog, random.Random(f"{budget.seed}/{rnd}/{i}"), HOT, stop)
                       for i, h in enumerate(handles)]
            churn = Churn(disk, rnd, model, snaps, rng)
            t_start = time.monotonic()
            for w in workers:
                w.start()
            churn.start()
            churn.join(timeout=120)
            while time.monotonic() - t_start < ROUND_SECONDS and not dog.tripped.is_set():
                time.sleep(0.05)
            stop.set()
            for w in workers:
                w.join(timeout=2 * dog.limit + 5)
            assert dog.fired is None, f"watchdog: {dog.fired} (seed {budget.seed}, round {rnd})"
            assert not any(w.is_alive() for w in workers), f"a client thread hangs (round {rnd})"
            assert not churn.is_alive(), f"a CLI command hangs (round {rnd})"
            problems = [p for w in workers for p in w.problems] + churn.problems
            figures["losses"] += sum(1 for p in problems if "read back" in p)
            assert not problems, f"seed {budget.seed}, round {rnd}:\n" + "\n".join(problems[:20])
            figures["operations"] += sum(w.ops for w in workers)
            figures["bytes_written"] += sum(w.written for w in workers)
            figures["verifies"] += churn.verifies
            figures["revert_refusals"] += 1 if snaps else 0
            figures["longest_cli_s"] = max([figures["longest_cli_s"], *churn.timings])
            for name in churn.deleted:
                snaps.remove(name)
                del expected[name]
                figures["snapshots_deleted"] += 1

            # Quiescent: nothing in flight, so what is on the disk now is exact.
            if churn.live is not None:
                name, rid, t0, t1 = churn.live
                h = srv.connect(name)
                try:
                    data = read_all(h, SIZE)
                finally:
                    close_handle(h)
                problems = model.check(0, data, t0, t1)
                model.end_read(rid)
                assert not problems, f"live snapshot {name} (seed {budget.seed}):\n" + "\n".join(problems)
                expected[name] = data
                snaps.append(name)
                figures["snapshots_created"] += 1
            now = time.monotonic()
            data = read_all(handles[0], SIZE)
            problems = model.check(0, data, now, time.monotonic())
            assert not problems, f"running point after round {rnd} (seed {budget.seed}):\n" + "\n".join(problems)
            model.settle(0, data)
            name = f"q{rnd}"
            run_vdisk("snapshot", "create", disk, name)
            expected[name] = bytes(model.base)
            snaps.append(name)
            figures["snapshots_created"] += 1
            problems = _check_snapshots(srv, expected)
            assert not problems, f"seed {budget.seed}, round {rnd}:\n" + "\n".join(problems)
            figures["bytes_checked"] += SIZE * (len(expected) + 1)
            if rnd % 3 == 2:
                target = rng.choice(snaps)
                for h in handles:
                    close_handle(h)
                handles = []
                _revert(disk, target)
                figures["bytes_checked"] += model.checked_bytes
                model = Model(SIZE, base=expected[target])
                handles = [srv.connect() for _ in range(CONNECTIONS)]
                figures["reverts"] += 1
            figures["rounds"] += 1
            torture_figures.update(figures)

        handles[0].flush()
        for h in handles:
            close_handle(h)
        handles = []
        assert srv.stop() == 0, f"vdisk serve failed to stop cleanly:\n{srv.log()[-3000:]}"
        assert "Traceback" not in srv.log(), f"raw traceback in the server's log:\n{srv.log()[-5000:]}"

        from vdisk import Disk
        with Disk.open(disk, readonly=True) as d:
            assert d.read(0, SIZE) == bytes(model.base), "running point differs after reopening"
            assert sorted(s.name for s in d.snapshots(exclusive=False)) == sorted(expected)
            for name, want in expected.items():
                assert d.open_snapshot(name).read(0, SIZE) == want, f"snapshot {name} differs after reopening"
        figures["bytes_checked"] += SIZE * (len(expected) + 1) + model.checked_bytes
        r = run_vdisk("verify", disk, "--data", check=False)
        assert r.returncode == 0, f"vdisk verify --data after the run: {r.stdout}{r.stderr}"
        figures["verifies"] += 1
    finally:
        dog.stop.set()
        figures["longest_request_s"] = round(dog.longest, 3)
        figures["longest_cli_s"] = round(figures["longest_cli_s"], 3)
        torture_figures.update(figures)
        for h in handles:
            close_handle(h)
        srv.stop()


# ---------------------------------------------------------------- read-only beside the writer

STRIPE = 4 * 4096        # every write covers one whole stripe, so a torn read is visible
STRIPES = 64


def _stripe_writer(h, rng, started: dict, stop, dog, name, problems, counts):
    from load_model import pattern
    k = 0
    try:
        while not stop.is_set() and not dog.tripped.is_set():
            s = rng.randrange(STRIPES)
            k = (rng.getrandbits(20) << 4) | counts["id"]
            counts["n"] += 1
            started.setdefault(s, set()).add(k)
            dog.enter(name, f"write stripe {s}")
            try:
                h.pwrite(pattern(k, s * STRIPE, (s + 1) * STRIPE), s * STRIPE,
                         0 if rng.random() < 0.7 else import_nbd().CMD_FLAG_FUA)
                if rng.random() < 0.1:
                    h.flush()
            finally:
                dog.leave(name)
    except Exception as e:
        problems.append(f"{name}: {type(e).__name__}: {e}")


def _stripe_owner(data: bytes, s: int) -> int | None:
    """The write whose bytes fill stripe ``s`` entirely (0 for zeros), None if torn."""
    from load_model import pattern
    if data == bytes(STRIPE):
        return 0
    k = int.from_bytes(data[:8], "little") >> 40
    return k if data == pattern(k, s * STRIPE, (s + 1) * STRIPE) else None


def test_readonly_server_beside_the_writer(tmp_path, torture_budget, torture_figures):
    """`vdisk serve --readonly` beside `vdisk serve`: every read is one whole
    committed write of each stripe (never torn, never an error), and after
    a flush the read-only export shows exactly the writer's state."""
    from load_model import pattern
    budget = torture_budget(8, 3, weight=0.5, suite_share=0.5)
    disk = str(tmp_path / "d.vdisk")
    run_vdisk("create", disk, "--size", str(SIZE))
    figures = dict(operations=0, bytes_checked=0, rounds=0, errors=0, torn_reads=0, losses=0, seed=budget.seed)
    torture_figures.update(figures)
    dog = Watchdog()
    dog.start()
    logs = str(tmp_path / "logs")
    srv = Server(disk, log_dir=logs)
    ro = None
    handles = []
    try:
        ro = Server(disk, "--readonly", log_dir=logs, sock=str(tmp_path / "ro.sock"))
        handles = [srv.connect() for _ in range(2)]
        readers = [ro.connect() for _ in range(2)]
        handles += readers
        state: dict[int, int] = {}           # stripe -> write id, at the last quiescent point
        for rnd in budget.rounds():
            started: dict[int, set[int]] = {s: {v} for s, v in state.items()}
            stop = threading.Event()
            problems: list[str] = []
            counts = [{"id": i, "n": 0} for i in range(2)]
            writers = [threading.Thread(target=_stripe_writer, daemon=True,
                                        args=(handles[i], random.Random(f"{budget.seed}/{rnd}/{i}"), started,
                                              stop, dog, f"writer{i}", problems, counts[i]))
                       for i in range(2)]

            def read_loop(h, rng, name):
                try:
                    while not stop.is_set() and not dog.tripped.is_set():
                        s0 = rng.randrange(STRIPES)
                        n = rng.randint(1, min(8, STRIPES - s0))
                        dog.enter(name, f"read stripes {s0}..{s0 + n - 1}")
                        try:
                            data = bytes(h.pread(n * STRIPE, s0 * STRIPE))
                        finally:
                            dog.leave(name)
                        figures["operations"] += 1
                        figures["bytes_checked"] += len(data)
                        for i in range(n):
                            s = s0 + i
                            k = _stripe_owner(data[i * STRIPE:(i + 1) * STRIPE], s)
                            if k is None:
                                figures["torn_reads"] += 1
                                problems.append(f"{name}: stripe {s} is torn (bytes of several writes)")
                            elif k and k not in started.get(s, ()):
                                problems.append(f"{name}: stripe {s} holds write {k}, never written there")
                except Exception as e:
                    figures["errors"] += 1
                    problems.append(f"{name}: {type(e).__name__}: {e}")

            rthreads = [threading.Thread(target=read_loop, daemon=True,
                                         args=(h, random.Random(f"r{budget.seed}/{rnd}/{i}"), f"reader{i}"))
                        for i, h in enumerate(readers)]
            for t in writers + rthreads:
                t.start()
            r = run_vdisk("verify", disk, "--data", check=False)
            time.sleep(max(0.0, min(2.0, budget.left() / 2)))
            stop.set()
            for t in writers + rthreads:
                t.join(timeout=2 * dog.limit + 5)
            assert dog.fired is None, f"watchdog: {dog.fired}"
            assert r.returncode == 0, f"vdisk verify --data beside the writer: {r.stdout}{r.stderr}"
            assert not problems, f"seed {budget.seed}, round {rnd}:\n" + "\n".join(problems[:20])
            figures["operations"] += sum(c["n"] for c in counts)
            handles[0].flush()
            want = read_all(handles[0], SIZE)
            got = read_all(readers[0], SIZE)
            assert got == want, "after a flush the read-only export does not show the writer's state"
            state = {s: _stripe_owner(want[s * STRIPE:(s + 1) * STRIPE], s) for s in range(STRIPES)}
            figures["bytes_checked"] += 2 * SIZE
            figures["rounds"] += 1
            torture_figures.update(figures)
    finally:
        dog.stop.set()
        torture_figures.update(figures)
        for h in handles:
            close_handle(h)
        if ro is not None:
            ro.stop()
        srv.stop()


# ---------------------------------------------------------------- the model's own rules

def _op(m: Model, start, end, t0, t1, zero=False):
    op = m.begin_write(start, end, zero)
    op.t0, op.t1 = t0, t1
    return op


def test_model_rules():
    from load_model import pattern
    m = Model(64 << 10)
    a = _op(m, 0, 8192, 1.0, 2.0)                       # completed alone: must be read back
    assert m.check(0, pattern(a.k, 0, 8192), 3.0, 4.0) == []
    assert m.check(0, bytes(8192), 3.0, 4.0), "a stale (initial) block was accepted"
    assert m.check(100, bytes(10), 1.5, 1.6) == [], "a read overlapping the write may see the old bytes"
    b = _op(m, 4096, 4196, 5.0, 7.0)                    # two overlapping writes in flight together
    c = _op(m, 4000, 4200, 6.0, 8.0)
    for first, second in ((b, c), (c, b)):
        want = bytearray(pattern(a.k, 0, 8192))
        want[first.start:first.end] = pattern(first.k, first.start, first.end)
        want[second.start:second.end] = pattern(second.k, second.start, second.end)
        assert m.check(0, bytes(want), 9.0, 9.5) == [], f"order {first.k}, {second.k} refused"
    torn = bytearray(pattern(c.k, 4000, 4200))
    torn[150:160] = pattern(a.k, 4150, 4160)            # an older write's bytes inside a newer one's range
    assert m.check(4000, bytes(torn), 9.0, 9.5)
    z = _op(m, 0, 64 << 10, 10.0, 11.0, zero=True)      # a trim wins over everything before it
    assert m.check(0, bytes(64 << 10), 12.0, 13.0) == []
    assert m.check(4000, pattern(c.k, 4000, 4200), 12.0, 13.0)
    assert z.k == 0


def test_model_pruning_keeps_what_a_read_may_still_return():
    from load_model import PRUNE_AT, pattern
    m = Model(8192)
    rid, r0 = m.begin_read()                            # a slow read sent before all the writes
    ops = []
    for i in range(PRUNE_AT + 5):
        op = m.begin_write(0, 4096)
        m.end_write(op, True)
        ops.append(op)
    assert m.check(0, bytes(4096), r0, time.monotonic()) == [], "the slow read may still see the base"
    m.end_read(rid)
    op = m.begin_write(0, 4096)
    m.end_write(op, True)
    assert len(m.hist[0]) <= PRUNE_AT + 1
    assert m.check(0, pattern(op.k, 0, 4096), time.monotonic(), time.monotonic()) == []
    assert m.check(0, pattern(ops[-1].k, 0, 4096), time.monotonic(), time.monotonic())
