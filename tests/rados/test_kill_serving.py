"""The torture suite's crash case on a ``rados:`` disk, through the real server.

A rados disk is served by ``vdisk serve`` (nbdkit's python plugin) on a unix
socket and driven by libnbd - writes of every alignment and size, bursts of
one-block writes with up to 16 in flight (aio), zeroes, trims, flushes - and
through its control socket: live snapshot create, delete and revert, compact
(powercut_model's stream, via kill_serving.py). At a random moment (seeded:
after a random time, or a few milliseconds into the n-th flush, control
operation or burst; never at a quiet point, the client is always sending)
the whole serving process group - ``vdisk serve`` and nbdkit - is SIGKILLed,
as a host's death would. Then:

* a plain ``vdisk serve`` of the disk is refused (exit 5): the dead
  holder's RADOS lock is still there, and named (in some rounds);
* ``vdisk serve --break-lock`` takes over, as the same Ceph client
  identity as the dead server in some rounds and as another in others
  (the dead holder's address is blocklisted first);
* through the new server, every block reads as at the last completed
  commit (flush, snapshot create/delete, revert), or as in a later state up
  to the end of the operation in flight - so every write acknowledged by a
  completed flush reads back exactly, and writes after it read old or new,
  block by block; every snapshot of that commit exists and its export reads
  as when it was taken, and no snapshot exists that the stream never made;
* ``verify(location, data=True)`` is clean beside the new writer (and
  every block of the running point and of every snapshot was read through
  the new server, which checks each against its checksum as it reads it).

The disk carries on from round to round under the new server, which the
next round kills; the last one is stopped cleanly and ``vdisk verify
--data`` must pass. A failure names the base seed, the round and its seed,
the kill, and the blocks lost with the operation that last wrote each;
``VDISK_TORTURE_SEED=S`` reruns it, ``VDISK_TORTURE_MINUTES=N`` makes it a
long run (its share of the torture suite's budget, weight WEIGHT).

The short version (the default suite's) is SHORT_ROUNDS rounds or 40 s:
one lap of PLANS, so every kind of kill lands once whatever the seed
(checked at the end); ``VDISK_KILL_ROUNDS=N`` runs N rounds instead (9 was
the short version until the suite's wall time needed the room).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import kill_serving as ks
from vdisk import Disk
from vdisk.location import RadosLocation
from vdisk.snapshots.verify import verify

SIZE = 16 << 20
BS = 4096
CHUNK = 4 << 20
WEIGHT = 0.8
IDENTITIES = ("serve-a", "serve-b")
PLANS = ("time", "flush", "control", "burst", "time")    # taken in turn: each in every 5 rounds
SHORT_ROUNDS = int(os.environ.get("VDISK_KILL_ROUNDS", len(PLANS)))


def _refused(ceph, disk: str, client: str, log: str) -> str:
    """``vdisk serve`` without --break-lock: must exit 5 naming the holder; returns its line."""
    argv = [sys.executable, "-m", "vdisk.cli.main", "--ceph-conf", ceph.conf, "--ceph-id", client,
            "serve", disk]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)       # not reaped yet: still our group
        p.communicate()
        raise AssertionError("vdisk serve of a disk locked by a dead holder hung for 60 s") from None
    with open(log, "a") as f:
        f.write(err)
    assert p.returncode == 5, (p.returncode, out, err)
    line = err.strip().splitlines()[-1]
    assert "is in use" in line and "--break-lock" in line, err
    return line


def _read_all(h, size: int) -> bytes:
    return b"".join(h.pread(min(CHUNK, size - off), off) for off in range(0, size, CHUNK))


class Kill:
    """When to SIGKILL the group: the round's plan (PLANS in turn), and a watchdog.

    ``time``: after a random time; ``flush``: 0-1.5 ms after sending the
    n-th flush (one takes about 1 ms here), timed by the driver itself, so
    the kill lands inside the flush or just after it; ``control``: 0-6 ms into the
    n-th snapshot create/delete, revert or compact; ``burst``: 0-20 ms into
    the n-th burst of aio writes.
    """

    def __init__(self, plan: str, rng: random.Random, srv: ks.RadosServer, longest: float):
        self.srv = srv
        self.plan = plan
        self.timer = None
        self.lock = threading.Lock()
        self.longest = longest
        self.delay = {"time": rng.uniform(0.05, longest), "flush": rng.uniform(0, 0.0015),
                      "control": rng.uniform(0, 0.006), "burst": rng.uniform(0, 0.02)}[self.plan]
        self.nth = None if self.plan == "time" else rng.randrange(1, {"flush": 12, "control": 3,
                                                                      "burst": 3}[self.plan])
        self.seen = 0
        self.started = None

    def start(self):
        self.started = time.monotonic()
        if self.plan == "time":
            self._arm(self.delay)

    def _arm(self, delay: float):
        with self.lock:
            if self.timer is None:
                self.timer = threading.Timer(delay, self.srv.signal_kill)
                self.timer.daemon = True
                self.timer.start()

    def before(self, op) -> bool:
        """Called before each operation is sent; True: the driver sends this
        flush with :meth:`RadosServer.flush_then_kill`."""
        kind = op[0]
        if time.monotonic() - self.started > self.longest + 1.5:
            self._arm(0)                # the chosen moment never came: now, mid-stream
        hit = (self.plan == "flush" and kind == "flush"
               or self.plan == "control" and kind in ("snap", "delete", "revert", "compact")
               or self.plan == "burst" and kind == "scatter")
        if not hit:
            return False
        self.seen += 1
        if self.seen != self.nth:
            return False
        if self.plan == "flush":
            with self.lock:
                if self.timer is not None:
                    return False
                self.timer = "inline"
            return True
        self._arm(self.delay)
        return False

    def cancel(self):
        with self.lock:
            if isinstance(self.timer, threading.Timer):
                self.timer.cancel()
                self.timer.join()


def _figures():
    return {"rounds": 0, "crashes": 0, "operations": 0, "bytes_checked": 0, "acknowledged_writes_checked": 0,
            "losses": 0, "later_blocks_found": 0, "takeovers_same_identity": 0, "takeovers_other_identity": 0,
            "refused_without_break_lock": 0, "verify_runs": 0, "snapshots_checked": 0,
            "kills_by_time": 0, "kills_in_flush": 0, "kills_in_control": 0, "kills_in_burst": 0,
            "in_flight_flush": 0, "in_flight_control": 0, "in_flight_write": 0, "in_flight_none": 0,
            "slowest_operation": ["", 0.0]}


def _drive(srv: ks.RadosServer, tracker: ks.Tracker, kill: Kill, seed: int, names, where: str, fig: dict):
    """The stream until the kill; returns the error the operation in flight met (None: none was)."""
    kill.start()
    try:
        for op in ks.stream(seed, SIZE, BS, names):
            if kill.before(op):
                if srv.flush_then_kill(kill.delay):
                    tracker.done(op)            # acknowledged: a completed commit
                else:
                    tracker.in_flight(op)
                return None
            started = time.monotonic()
            try:
                srv.apply(op, BS)
            except Exception as e:              # noqa: BLE001  (judged right below)
                if not srv.killed:
                    raise AssertionError(f"{op[:2]} failed before the kill: {e!r}; {where}") from e
                tracker.in_flight(op)
                return e
            tracker.done(op)
            took = time.monotonic() - started
            if took > fig["slowest_operation"][1]:
                fig["slowest_operation"] = [op[0], round(took, 3)]
    finally:
        kill.cancel()
        srv.kill()


def _read_checked(h, what: str, where: str, fig: dict) -> bytes:
    try:
        data = _read_all(h, SIZE)
    except Exception as e:                      # noqa: BLE001  (EIO: the server's log names the block)
        fig["losses"] += 1
        raise AssertionError(f"{what} does not read after the take-over: {e}; {where}") from e
    fig["bytes_checked"] += SIZE
    return data


def _check(srv: ks.RadosServer, tracker: ks.Tracker, where: str, fig: dict) -> tuple[bytes, set]:
    """Through the new server: the running point and every snapshot; returns (bytes, snapshot names)."""
    got = _read_checked(srv.h, "the running point", where, fig)
    bad, newer = tracker.allowed.check(got)
    fig["later_blocks_found"] += newer
    fig["losses"] += len(bad)
    assert not bad, (f"{len(bad)} blocks read neither the last completed commit nor a later write: "
                     f"{tracker.describe(bad, got)}; {where}")
    exports = {e["name"] for e in srv.event["exports"]} - {""}
    names = {s.name for s in srv.control().snapshots(exclusive=False)}
    assert exports == names, (exports, names, where)
    lost = tracker.required - names
    fig["losses"] += len(lost)
    assert not lost, f"snapshots lost: {sorted(lost)}; {where}"
    assert names <= set(tracker.snaps), f"unexpected snapshots {sorted(names - set(tracker.snaps))}; {where}"
    for name in sorted(names):
        h = srv.handle(name)
        try:
            data = _read_checked(h, f"snapshot {name}", where, fig)
        finally:
            h.shutdown()
        fig["snapshots_checked"] += 1
        want = tracker.snaps[name]
        if data != want:
            diff = sum(data[i:i + BS] != want[i:i + BS] for i in range(0, SIZE, BS))
            fig["losses"] += diff
            raise AssertionError(f"snapshot {name}: {diff} blocks changed; {where}")
    return got, names


def test_serving_process_group_sigkilled_at_random_moments_loses_no_flushed_write(ceph, prefix, tmp_path,
                                                                                   request):
    pytest.importorskip("nbd")
    budget = ks.budget(40, SHORT_ROUNDS, weight=WEIGHT)
    longest = 3.0 if budget.long_run else 1.2
    fig = _figures()
    disk = f"rados:{ceph.pool}/{prefix}"
    loc = RadosLocation(ceph.pool, prefix, ceph.conf, "verifier")
    Disk.create(RadosLocation(ceph.pool, prefix, ceph.conf), SIZE, BS).close()
    log = str(tmp_path / "serve.log")
    group = ks.Group()
    rng = random.Random(budget.seed * 7919 + 16)
    model, snaps = bytes(SIZE), {}
    history = []
    try:
        srv = ks.RadosServer(ceph, disk, IDENTITIES[0], log, group)
        for rnd in budget.rounds():
            seed = budget.seed * 100_000 + 16_000 + rnd
            laps, t0 = {}, time.monotonic()

            def lap(name):
                nonlocal t0
                now = time.monotonic()
                laps[name] = now - t0
                t0 = now
            tracker = ks.Tracker(model, snaps, BS)
            kill = Kill(PLANS[(rnd + budget.seed) % len(PLANS)], rng, srv, longest)
            base = f"base seed {budget.seed}, round {rnd} (seed {seed}, kill {kill.plan} #{kill.nth} " \
                   f"+{kill.delay:.4f} s); history {history}"
            error = _drive(srv, tracker, kill, seed, sorted(snaps), base, fig)
            lap("drive")
            fig["rounds"] += 1
            fig["crashes"] += 1
            fig["kills_by_time" if kill.plan == "time" else f"kills_in_{kill.plan}"] += 1
            flight = tracker.flight[0] if tracker.flight else None
            fig["in_flight_none" if flight is None else "in_flight_flush" if flight == "flush" else
                "in_flight_control" if flight in ("snap", "delete", "revert", "compact") else
                "in_flight_write"] += 1
            fig["operations"] += len(tracker.ops)
            where = (f"{base}; in flight {tracker.flight and tracker.flight[:3]} ({type(error).__name__}), "
                     f"last completed commit op {tracker.commit} of {len(tracker.ops)}, the last ops "
                     f"{[op[:3] for op in tracker.ops[-12:]]}")

            # Take over: the same identity or another, always fencing the dead holder first.
            new_id = IDENTITIES[0] if rnd == 0 else IDENTITIES[1] if rnd == 1 else rng.choice(IDENTITIES)
            same = new_id == srv.client
            if rnd < 2 or rng.random() < 0.2:
                line = _refused(ceph, disk, new_id, log)
                assert f"vdisk PID {srv.nbdkit_pid} " in line, f"the dead holder is not named: {line}"
                fig["refused_without_break_lock"] += 1
                lap("refused")
            srv = ks.RadosServer(ceph, disk, new_id, log, group, break_lock=True)
            lap("take_over")
            fig["takeovers_same_identity" if same else "takeovers_other_identity"] += 1
            history.append((rnd, seed, kill.plan, flight, len(tracker.ops), tracker.commit, new_id,
                            round(laps["take_over"], 2)))

            got, names = _check(srv, tracker, where, fig)
            lap("check")
            report = verify(loc, data=True)
            lap("verify")
            fig["verify_runs"] += 1
            assert report.ok, f"verify after the take-over: {[str(p) for p in report.problems[:5]]}; {where}"
            assert report.data_blocks == report.blocks, (report.data_blocks, report.blocks, where)
            fig["acknowledged_writes_checked"] += tracker.durable_writes
            model, snaps = got, {n: tracker.snaps[n] for n in names}
            for k, v in laps.items():
                fig[f"{k}_seconds_max"] = max(fig.get(f"{k}_seconds_max", 0.0), round(v, 2))

        assert srv.stop() == 0, f"the last server did not stop cleanly: {open(log).read()[-2000:]}"
        r = subprocess.run([sys.executable, "-m", "vdisk.cli.main", "--ceph-conf", ceph.conf, "verify", disk,
                            "--data"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "no problems found" in r.stdout, (r.returncode, r.stdout, r.stderr)
        fig["verify_runs"] += 1
        with Disk.open(loc, readonly=True) as d:
            assert d.read(0, SIZE) == model, "after a clean stop the disk differs from the last check"
            fig["bytes_checked"] += SIZE
    except BaseException:
        # The servers' stderr (nbdkit's log of a failed request names its cause).
        with open(log, errors="replace") as f:
            print("---- vdisk serve / nbdkit stderr (last 6000 characters) ----\n" + f.read()[-6000:])
        raise
    finally:
        group.kill_all()
        ks.report_figures(request.node.nodeid, fig)
    assert fig["rounds"] >= 3 and fig["takeovers_same_identity"] and fig["takeovers_other_identity"], fig
    if fig["rounds"] >= len(PLANS):             # a whole lap of PLANS: every kind of kill landed
        assert all(fig[k] for k in ("kills_by_time", "kills_in_flush", "kills_in_control", "kills_in_burst")), fig


def test_verify_data_beside_a_logged_flush_finds_no_damage(ceph, prefix):
    """What the kill test met after a take-over (fixed by 3a0b4f5), made
    certain: a committed extent rewritten in place by one write (no snapshot
    since, so the committed map keeps its VBAs at their old PBAs), one flush
    through the redo log, and verify --data beside the writer. Verify reads
    the committed metadata only; a logged flush that freed, punched and
    reused those old PBAs made it report healthy blocks as damaged."""
    loc = RadosLocation(ceph.pool, prefix, ceph.conf)
    old, new = random.Random(1).randbytes(64 * BS), random.Random(2).randbytes(64 * BS)
    with Disk.create(loc, SIZE, BS) as d:
        d.write(0, old)                             # committed by close
    with Disk.open(RadosLocation(ceph.pool, prefix, ceph.conf, "writer")) as d:
        d.write(0, new)                             # >= 16 blocks: remapped at once, the old PBAs released
        d.flush()                                   # logged: the old PBAs must stay as they are until a commit
        with Disk.open(RadosLocation(ceph.pool, prefix, ceph.conf, "reader"), readonly=True) as r:
            assert r.read(0, 64 * BS) == new        # the disk is right
        report = verify(RadosLocation(ceph.pool, prefix, ceph.conf, "verifier"), data=True)
        assert report.ok, [str(p) for p in report.problems[:3]]
