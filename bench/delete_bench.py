"""Snapshot create and delete benchmark, beside qcow2 internal snapshots (qemu-img).

One file over 500 lines on purpose: a benchmark is run and read as one
script (its lock tracer is a diagnostic of this benchmark only).

    .venv/bin/python bench/delete_bench.py [--quick] [--runs 3] [--dir /var/tmp] [--no-qemu]
                                           [--no-io] [--trace]

Every figure is the median of ``--runs`` runs; vdisk and qcow2 get the same
data written the same way in each run (8 MiB sequential writes for the fill,
then 4 KiB writes at the same scattered offsets in the same order).

Create: the time to take a snapshot of a 4 GiB disk holding 64 MiB, and one
holding 4 GiB (``Disk.create_snapshot`` in process; ``qemu-img snapshot -c``
for qcow2, whose internal snapshot raises the refcount of every cluster; a
``qemu-img snapshot -l`` row shows what opening the image alone costs it).
Each sample takes a snapshot and deletes it again (untimed), so all samples
see the same disk, and samples alternate between the two disks so both see
the same device state (a device still writing back a fill slows every sync).

Delete: a 4 GiB disk, fully written; snapshot ``base``; 10% of its blocks
(104,857) rewritten as scattered 4 KiB writes; snapshot ``after``. ``base``
now owns the old versions of those blocks alone, and deleting it is timed:
``Disk.delete_snapshot`` (which commits, and punches holes for the free runs
it makes, before it returns; the engine punches runs of 64 KiB or more and
keeps scattered single blocks in the file for reuse) against ``qemu-img snapshot -d`` on the qcow2 image, with
``pass-discard-snapshot`` on (qcow2's default) and off, passed as
``--image-opts driver=qcow2,file.filename=IMG,pass-discard-snapshot=on|off``.
Space is counted twice: blocks the engine's allocator freed (``info()``
``physical_bytes``) and bytes given back to the file system (the data file's
``st_blocks``). vdisk's count is what ``delete_snapshot`` returns, checked
against the 104,857 blocks ``base`` owns. qcow2's copy-on-write unit is its
64 KiB cluster, so its ``base`` owns every cluster a rewrite touched; that
count comes from the offsets written (qemu-img does not report it) and the
``st_blocks`` drop with discards on confirms it.

I/O keeps flowing: while vdisk deletes, a second thread of the same process
does 4 KiB random writes and reads on the running point, as fast as it can;
its ops/s and longest single operation before and during the delete are
reported against the bar (no stall above 50 ms). ``--no-io`` times the
delete alone. ``--trace`` also wraps the disk's lock (a diagnostic that
reaches into engine internals) and reports how long each step of the delete
held it: the begin commit, scan batches, sweep batches, sweep commits (with
their fdatasync, LMDB commit and hole punches), and the final commit.

Disks go under ``--dir`` (default /var/tmp: a real file system, not tmpfs;
its mount options are printed, ``discard`` makes every hole punch slower).
Scratch space: about 15 GiB at the full size. A full run takes a little over
a minute per run (most of it writing the 4 GiB images); ``--quick`` uses a
256 MiB disk and one run (a few seconds).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array

from vdisk import Disk

from benchlib import machine  # noqa: E402  (bench/ is the script's directory)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BS = 4 * KIB
FILL_WRITE = 8 * MIB
QCOW2_CLUSTER = 64 * KIB
STALL_BAR = 0.050
CREATE_SAMPLES = 9              # snapshot create samples per disk per run
IO_MAX_SECONDS = 900            # the load thread stops by itself after this
IO_BEFORE_SECONDS = 2.0         # load alone before the delete starts (the baseline)
SUBPROCESS_TIMEOUT = 1800




def mount_of(path: str) -> tuple[str, str, str]:
    """(mount point, fs type, options) of the file system holding ``path``."""
    path = os.path.realpath(path)
    best = ("/", "unknown", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, opts)
    except OSError:
        pass
    return best


def file_bytes(path: str) -> int:
    """Bytes the file system holds for a file (or every file under a directory)."""
    if os.path.isdir(path):
        return sum(file_bytes(os.path.join(path, n)) for n in os.listdir(path))
    return os.stat(path).st_blocks * 512


def data_beyond(path: str, offset: int) -> int:
    """Bytes of data (not holes) a file holds past ``offset``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        total, pos = 0, offset
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:          # ENXIO: no data past pos
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            total += stop - start
            pos = stop
        return total
    finally:
        os.close(fd)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Plan:
    """What every run writes: the scattered rewrite offsets and the data pool."""

    def __init__(self, size: int, small: int, seed: int):
        rng = random.Random(seed)
        self.size = size
        self.small = small
        self.blocks = size // BS
        self.rewrite = self.blocks // 10
        # Distinct blocks in random order: base then owns exactly this many.
        self.offsets = [b * BS for b in rng.sample(range(self.blocks), self.rewrite)]
        self.fill_chunk = rng.randbytes(FILL_WRITE)
        self.pool = rng.randbytes(256 * BS)
        self.qcow2_clusters = len({off // QCOW2_CLUSTER for off in self.offsets})


# ------------------------------------------------------------------ vdisk

def vdisk_fill(d: Disk, nbytes: int, chunk: bytes):
    for off in range(0, nbytes, FILL_WRITE):
        d.write(off, chunk[:min(FILL_WRITE, nbytes - off)])
    d.flush()


def create_samples(disks: dict, n: int, take) -> dict[str, list]:
    """``take(disk, name)`` -> sample, n times per disk, alternating disks.

    Alternating puts both disks through the same device state: a device
    still writing back the 4 GiB fill makes every sync slower for a while,
    which measured alone would look like a cost of the data written.
    """
    os.sync()
    out: dict[str, list] = {k: [] for k in disks}
    for i in range(n):
        for k, disk in disks.items():
            out[k].append(take(disk, f"probe{i}"))
    return out


def vdisk_create_sample(d: Disk, name: str) -> float:
    t = timed(lambda: d.create_snapshot(name))
    d.delete_snapshot(name)
    return t


class IoLoad(threading.Thread):
    """4 KiB random writes and reads, alternating, on the running point."""

    def __init__(self, disk: Disk, size: int, seed: int):
        super().__init__(name="io-load", daemon=True)
        self.disk = disk
        self.blocks = size // BS
        self.rng = random.Random(seed)
        self.data = self.rng.randbytes(BS)
        self.stop = threading.Event()
        self.starts = array("d")
        self.lats = array("d")
        self.error: BaseException | None = None

    def run(self):
        try:
            d, rng, blocks, data = self.disk, self.rng, self.blocks, self.data
            clock = time.perf_counter
            end = clock() + IO_MAX_SECONDS
            i = 0
            while not self.stop.is_set() and clock() < end:
                off = rng.randrange(blocks) * BS
                t = clock()
                if i & 1:
                    d.read(off, BS)
                else:
                    d.write(off, data)
                self.starts.append(t)
                self.lats.append(clock() - t)
                i += 1
        except BaseException as e:       # reported by the main thread
            self.error = e

    def window(self, t0: float, t1: float) -> dict:
        """ops/s completed in [t0, t1], and the longest op overlapping it."""
        done = 0
        worst, worst_at, over = 0.0, 0.0, 0
        lats = []
        for s, lat in zip(self.starts, self.lats):
            e = s + lat
            if e < t0 or s > t1:
                continue
            if t0 <= e <= t1:
                done += 1
                lats.append(lat)
            if lat > worst:
                worst, worst_at = lat, s - t0
            over += lat > STALL_BAR
        lats.sort()
        p99 = lats[int(len(lats) * 0.99)] if lats else 0.0
        return {"ops_s": done / (t1 - t0), "max": worst, "max_at": worst_at, "p99": p99,
                "over_bar": over}


class LockTrace:
    """Diagnostic stand-in for ``Disk._lock``: who held it, for how long.

    Reaches into engine internals (``_lock``, ``_commit``, ``alloc``,
    ``forest.commit``, ``_punch_free_runs``, ``vdisk.datastore_file.punch_hole``) so a
    stall can be pinned on one step and one part of a commit.
    """

    # Function names on the stack -> the step of the delete (or the load).
    STEPS = {"begin": "begin", "_scan": "scan batch", "_sweep": "sweep batch",
             "run_pending": "run_pending: read record", "delete_snapshot": "delete: pending check",
             "_after_work": "load: write", "write": "load: write", "read": "load: read"}
    COMMITS = {"begin": "begin commit", "sweep batch": "sweep batch + commit",
               "run_pending: read record": "final commit", "load: write": "load: write + auto-commit"}
    PARTS = ("fdatasync", "alloc", "lmdb", "punch_scan", "punch")

    def __init__(self, disk: Disk):
        # The data file's punches are made by its store (vdisk/datastore_file.py).
        import vdisk.datastore_file as engine
        self.disk = disk
        self.engine = engine
        self.inner = disk._lock
        self.local = threading.local()
        # (step, start, held, commit info or None), one per outermost hold
        self.holds: list[tuple[str, float, float, dict | None]] = []
        self.commit_now: dict | None = None
        self._orig_punch = engine.punch_hole
        self._orig_sync = os.fdatasync

    def _timer(self, part: str, fn):
        def wrapped(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                if self.commit_now is not None:
                    self.commit_now[part] += time.perf_counter() - t
                    if part == "punch":
                        self.commit_now["punches"] += 1
        return wrapped

    def install(self):
        disk = self.disk
        orig_commit = disk._commit

        def commit():
            info = dict.fromkeys(self.PARTS, 0.0)
            info.update(punches=0, by=self._step(sys._getframe(1)))
            self.commit_now = info
            t = time.perf_counter()
            try:
                orig_commit()
            finally:
                info["total"] = time.perf_counter() - t
                self.commit_now = None
                self.local.commit = info

        disk._commit = commit
        disk.alloc.prepare_commit = self._timer("alloc", disk.alloc.prepare_commit)
        disk.forest.commit = self._timer("lmdb", disk.forest.commit)
        disk._punch_free_runs = self._timer("punch_scan", disk._punch_free_runs)
        self.engine.punch_hole = self._timer("punch", self._orig_punch)
        os.fdatasync = self._timer("fdatasync", self._orig_sync)
        disk._lock = self

    def uninstall(self):
        disk = self.disk
        disk._lock = self.inner
        for obj, name in ((disk, "_commit"), (disk, "_punch_free_runs"), (disk.alloc, "prepare_commit"),
                          (disk.forest, "commit")):
            obj.__dict__.pop(name, None)
        self.engine.punch_hole = self._orig_punch
        os.fdatasync = self._orig_sync

    def _step(self, frame) -> str:
        while frame is not None:
            name = frame.f_code.co_name
            if name in self.STEPS and frame.f_code.co_filename != __file__:
                return self.STEPS[name]
            frame = frame.f_back
        return "other"

    def acquire(self, blocking=True, timeout=-1):
        ok = self.inner.acquire(blocking, timeout)
        if ok:
            depth = getattr(self.local, "depth", 0)
            if depth == 0:
                self.local.t0 = time.perf_counter()
                self.local.step = self._step(sys._getframe(1))
                self.local.commit = None
            self.local.depth = depth + 1
        return ok

    def release(self):
        self.local.depth -= 1
        if self.local.depth == 0:
            held = time.perf_counter() - self.local.t0
            commit = self.local.commit
            # A commit names the step better than where the lock was taken
            # (delete_snapshot takes it, then calls begin inside).
            step = self.local.step
            if commit is not None:
                step = self.COMMITS.get(commit["by"], commit["by"] + " + commit")
            self.holds.append((step, self.local.t0, held, commit))
        self.inner.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def report(self, t0: float, t1: float, load: "IoLoad | None"):
        inside = [h for h in self.holds if h[1] + h[2] >= t0 and h[1] <= t1]
        steps: dict[str, list[float]] = {}
        for step, _start, held, _c in inside:
            steps.setdefault(step, []).append(held)
        print("  lock holds during the delete (--trace):")
        print(f"    {'step':<28}{'count':>7}{'total s':>9}{'max ms':>9}{'> 50 ms':>9}")
        for step, hs in sorted(steps.items(), key=lambda kv: -max(kv[1])):
            print(f"    {step:<28}{len(hs):>7}{sum(hs):>9.3f}{max(hs) * 1e3:>9.1f}"
                  f"{sum(h > STALL_BAR for h in hs):>9}")
        commits = sorted((h for h in inside if h[3] is not None), key=lambda h: -h[3]["total"])
        for step, start, _held, c in commits[:6]:
            print(f"    {step:<26} at {start - t0:6.2f} s: {c['total'] * 1e3:6.1f} ms = fdatasync "
                  f"{c['fdatasync'] * 1e3:.1f} + free map {c['alloc'] * 1e3:.1f} + LMDB commit "
                  f"{c['lmdb'] * 1e3:.1f} + punch scan {c['punch_scan'] * 1e3:.1f} "
                  f"(of which {c['punches']} punches {c['punch'] * 1e3:.1f}) + other "
                  f"{(c['total'] - c['fdatasync'] - c['alloc'] - c['lmdb'] - c['punch_scan']) * 1e3:.1f}")
        if load is None:
            return
        ops = sorted(((lat, s) for s, lat in zip(load.starts, load.lats) if s + lat >= t0 and s <= t1),
                     reverse=True)[:3]
        for lat, s in ops:
            cover = [(step, h0, held) for step, h0, held, _c in inside
                     if not step.startswith("load") and h0 < s + lat and h0 + held > s]
            what = ", ".join(f"{step} {held * 1e3:.1f} ms at {h0 - t0:.2f} s" for step, h0, held in cover)
            print(f"    I/O op at {s - t0:6.2f} s took {lat * 1e3:6.1f} ms; delete held the lock: {what or 'no'}")


def vdisk_run(tmp: str, plan: Plan, run: int, io: bool, trace: bool) -> dict:
    res: dict = {}
    small_path = os.path.join(tmp, "small.vdisk")
    path = os.path.join(tmp, "big.vdisk")
    d = small = None
    try:
        small = Disk.create(small_path, plan.size)
        vdisk_fill(small, plan.small, plan.fill_chunk)
        d = Disk.create(path, plan.size)
        res["fill_s"] = timed(lambda: vdisk_fill(d, plan.size, plan.fill_chunk))
        got = create_samples({"small": small, "big": d}, CREATE_SAMPLES, vdisk_create_sample)
        res["create_small"], res["create_big"] = got["small"], got["big"]
        small.close()
        small = None
        shutil.rmtree(small_path)
        d.create_snapshot("base")
        pool = plan.pool

        def rewrite():
            for i, off in enumerate(plan.offsets):
                j = i % 256 * BS
                d.write(off, pool[j:j + BS])
            d.flush()
        res["rewrite_s"] = timed(rewrite)
        d.create_snapshot("after")
        data = os.path.join(path, "data")
        os.sync()
        phys0, fs0, end0 = d.info()["physical_bytes"], file_bytes(data), os.stat(data).st_size
        tracer = LockTrace(d) if trace else None
        load = IoLoad(d, plan.size, seed=1000 + run) if io else None
        if tracer:
            tracer.install()
        try:
            if load:
                load.start()
                time.sleep(IO_BEFORE_SECONDS)
            t0 = time.perf_counter()
            freed = d.delete_snapshot("base")
            t1 = time.perf_counter()
        finally:
            if load:
                load.stop.set()
                load.join()
            if tracer:
                tracer.uninstall()
        if load and load.error:
            raise RuntimeError(f"the I/O thread failed during the delete: {load.error!r}")
        res["delete_s"] = t1 - t0
        res["freed_blocks"] = freed
        res["phys_freed"] = phys0 - d.info()["physical_bytes"]
        # The I/O thread's writes meanwhile land past the old end of the data
        # file (nothing inside it is free until the delete's commits), so they
        # are added back; any that refilled a punched hole would make this an
        # underestimate, never an overstatement.
        res["fs_returned"] = fs0 - file_bytes(data) + data_beyond(data, end0)
        if load:
            res["io_before"] = load.window(load.starts[0], t0)
            res["io_during"] = load.window(t0, t1)
        print(f"  run {run + 1} vdisk: fill {res['fill_s']:.1f} s, rewrite {res['rewrite_s']:.1f} s, "
              f"delete {res['delete_s']:.2f} s, {freed} blocks freed (physical_bytes "
              f"{-res['phys_freed'] / MIB:+.1f} MiB{', I/O thread writing' if load else ''}), "
              f"{res['fs_returned'] / MIB:.1f} MiB returned to the file system", flush=True)
        if tracer:
            tracer.report(t0, t1, load)
    finally:
        for disk in (small, d):
            if disk is not None:
                disk.close()
        shutil.rmtree(small_path, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
    return res


# ------------------------------------------------------------------ qcow2

# Runs under Debian's /usr/bin/python3, which has libnbd's binding: qemu-nbd
# (socket-activated, so libnbd owns and reaps it) takes pipelined writes
# about 3x faster than qemu-io's one-command-at-a-time loop.
NBD_WRITER = r"""
import nbd, os, sys
img, wsize = sys.argv[1], int(sys.argv[2])
offsets = [int(x) for x in sys.stdin.read().split()]
pool = [nbd.Buffer.from_bytearray(bytearray(os.urandom(wsize))) for _ in range(4 if wsize > 65536 else 256)]
depth = 4 if wsize > 65536 else 64
h = nbd.NBD()
h.connect_systemd_socket_activation(["qemu-nbd", "-f", "qcow2", "--cache=unsafe", img])
i = 0
while i < len(offsets):
    while i < len(offsets) and h.aio_in_flight() < depth:
        h.aio_pwrite(pool[i % len(pool)], offsets[i], completion=lambda err: 1)
        i += 1
    h.poll(-1)
while h.aio_in_flight():
    h.poll(-1)
h.flush()
h.shutdown()
del h
"""


def qemu(*args: str) -> float:
    t = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(p.stderr or p.stdout).strip()}")
    return time.perf_counter() - t


def qcow2_write(img: str, wsize: int, offsets):
    p = subprocess.run(["/usr/bin/python3", "-c", NBD_WRITER, img, str(wsize)],
                       input="\n".join(map(str, offsets)), capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT)
    if p.returncode != 0:
        raise RuntimeError(f"writing {img} through qemu-nbd failed: {p.stderr.strip()}")


def qcow2_create_sample(img: str, name: str) -> tuple[float, float]:
    """(snapshot -c time, snapshot -l time: what opening the image costs)."""
    opened = qemu("qemu-img", "snapshot", "-l", img)
    created = qemu("qemu-img", "snapshot", "-c", name, img)
    qemu("qemu-img", "snapshot", "-d", name, img)
    return created, opened


def qcow2_delete(img: str, discard: str) -> tuple[float, int]:
    os.sync()
    before = file_bytes(img)
    t = qemu("qemu-img", "snapshot", "-d", "base", "--image-opts",
             f"driver=qcow2,file.filename={img},pass-discard-snapshot={discard}")
    return t, before - file_bytes(img)


def qcow2_run(tmp: str, plan: Plan, run: int) -> dict:
    res: dict = {}
    small = os.path.join(tmp, "small.qcow2")
    img = os.path.join(tmp, "big.qcow2")
    copy = os.path.join(tmp, "big-copy.qcow2")
    try:
        qemu("qemu-img", "create", "-q", "-f", "qcow2", small, str(plan.size))
        qcow2_write(small, FILL_WRITE, range(0, plan.small, FILL_WRITE))
        qemu("qemu-img", "create", "-q", "-f", "qcow2", img, str(plan.size))
        res["fill_s"] = timed(lambda: qcow2_write(img, FILL_WRITE, range(0, plan.size, FILL_WRITE)))
        got = create_samples({"small": small, "big": img}, CREATE_SAMPLES, qcow2_create_sample)
        for k in ("small", "big"):
            res[f"create_{k}"] = [c for c, _ in got[k]]
            res[f"open_{k}"] = [o for _, o in got[k]]
        os.unlink(small)
        qemu("qemu-img", "snapshot", "-c", "base", img)
        res["rewrite_s"] = timed(lambda: qcow2_write(img, BS, plan.offsets))
        qemu("qemu-img", "snapshot", "-c", "after", img)
        shutil.copyfile(img, copy)
        res["delete_on_s"], res["fs_returned_on"] = qcow2_delete(img, "on")
        res["delete_off_s"], res["fs_returned_off"] = qcow2_delete(copy, "off")
        for f in (img, copy):
            names = qemu_snapshots(f)
            if names != ["after"]:
                raise RuntimeError(f"{f} holds snapshots {names} after deleting base, expected ['after']")
    finally:
        for f in (small, img, copy):
            if os.path.exists(f):
                os.unlink(f)
    print(f"  run {run + 1} qcow2: fill {res['fill_s']:.1f} s, rewrite {res['rewrite_s']:.1f} s, "
          f"snapshot -d {res['delete_on_s']:.2f} s (discard on, "
          f"{res['fs_returned_on'] / MIB:.0f} MiB returned), {res['delete_off_s']:.2f} s (off)", flush=True)
    return res


def qemu_snapshots(img: str) -> list[str]:
    p = subprocess.run(["qemu-img", "snapshot", "-l", img], capture_output=True, text=True, check=True)
    lines = p.stdout.splitlines()[2:]
    return [ln.split()[1] for ln in lines if ln.strip()]


# ------------------------------------------------------------------ report

def med(rows: list[dict], key: str, sub: str | None = None) -> float:
    vals = []
    for r in rows:
        v = r[key] if sub is None else r[key][sub]
        vals.extend(v if isinstance(v, list) else [v])
    return statistics.median(vals)


def low(rows: list[dict], key: str) -> float:
    return min(x for r in rows for x in r[key])


def dur(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(plan: Plan, v: list[dict], q: list[dict], io: bool):
    small, size = plan.small, plan.size
    print()
    samples = len(v) * CREATE_SAMPLES
    print(f"### Snapshot create ({size // MIB} MiB disk; median and (minimum) of {samples} samples)\n")
    print(f"| | {small // MIB} MiB written | {size // MIB} MiB written | ratio of minimums | target |")
    print("|---|---|---|---|---|")

    def row(name, rows, key, target=""):
        s_med, b_med = med(rows, f"{key}_small"), med(rows, f"{key}_big")
        s_min, b_min = low(rows, f"{key}_small"), low(rows, f"{key}_big")
        print(f"| {name} | {dur(s_med)} ({dur(s_min)}) | {dur(b_med)} ({dur(b_min)}) | "
              f"{b_min / s_min:.2f} | {target or '-'} |")
        return s_min, b_min

    # Minimums judge flatness: one sync that waited on a busy journal (other
    # processes' writes) costs ~10 ms here, which drowns a 1 ms operation.
    vs, vb = low(v, "create_small"), low(v, "create_big")
    row("vdisk `create_snapshot`", v, "create", f"flat (<= 2): {verdict(vb <= 2 * vs)}")
    if q:
        qs, qb = row("`qemu-img snapshot -c` (qcow2)", q, "create")
        row("`qemu-img snapshot -l` (open and close only)", q, "open")
        print(f"| vdisk / qemu-img (medians) | {med(v, 'create_small') / med(q, 'create_small'):.3f} | "
              f"{med(v, 'create_big') / med(q, 'create_big'):.3f} | | |")

    n = plan.rewrite
    print()
    print(f"### Snapshot delete (base owns {n:,} scattered 4 KiB blocks = {n * BS / MIB:.0f} MiB of "
          f"{size // MIB} MiB; median of {len(v)} run(s))\n")
    print("| | time | blocks freed | blocks/s | freed in the image | returned to the file system | vs vdisk |")
    print("|---|---|---|---|---|---|---|")
    vd = med(v, "delete_s")
    freed = med(v, "freed_blocks")
    label = "vdisk `delete_snapshot`" + (" (I/O thread running)" if io else "")
    print(f"| {label} | {dur(vd)} | {freed:,.0f} | {freed / vd:,.0f} | "
          f"{freed * BS / MIB:.0f} MiB | {med(v, 'fs_returned') / MIB:.1f} MiB | 1.00 |")
    if q:
        cl_bytes = plan.qcow2_clusters * QCOW2_CLUSTER
        cl_blocks = cl_bytes // BS
        for key, name in (("on", "on (default)"), ("off", "off")):
            t = med(q, f"delete_{key}_s")
            print(f"| `qemu-img snapshot -d`, pass-discard-snapshot={name} | {dur(t)} | "
                  f"{plan.qcow2_clusters:,} clusters = {cl_blocks:,} x 4 KiB | {cl_blocks / t:,.0f} | "
                  f"{cl_bytes / MIB:.0f} MiB | {med(q, f'fs_returned_{key}') / MIB:.1f} MiB | "
                  f"{t / vd:.2f} |")
        t_on = med(q, "delete_on_s")
        print(f"\ntarget: vdisk delete (space returned included) <= qemu-img's with discards "
              f"({dur(vd)} vs {dur(t_on)}): {verdict(vd <= t_on)}")
    mismatch = [r["freed_blocks"] for r in v if r["freed_blocks"] != n]
    if mismatch:
        print(f"\nWARNING: delete_snapshot freed {mismatch} blocks, expected {n} (the blocks base owns alone)")
    if io:
        print("\n| I/O thread, 4 KiB random write+read | ops/s | p99 | longest op | ops > 50 ms |")
        print("|---|---|---|---|---|")
        for key, name in (("io_before", "before the delete"), ("io_during", "during the delete")):
            print(f"| {name} | {med(v, key, 'ops_s'):,.0f} | {med(v, key, 'p99') * 1e3:.1f} ms | "
                  f"{med(v, key, 'max') * 1e3:.1f} ms | {med(v, key, 'over_bar'):.0f} |")
        worst = max(r["io_during"]["max"] for r in v)
        at = max(v, key=lambda r: r["io_during"]["max"])["io_during"]["max_at"]
        print(f"\ntarget: no single stall above 50 ms during the delete (worst of all runs "
              f"{worst * 1e3:.1f} ms, {at:.2f} s into the delete): {verdict(worst <= STALL_BAR)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB disk (16 MiB for the small create), one run")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median); default 3")
    ap.add_argument("--dir", default="/var/tmp", help="scratch directory on a real file system (default /var/tmp)")
    ap.add_argument("--no-qemu", action="store_true", help="skip the qcow2 peer")
    ap.add_argument("--no-io", action="store_true", help="time the delete without the I/O thread")
    ap.add_argument("--trace", action="store_true", help="report how long each delete step held the disk lock")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    size, small, runs = 4 * GIB, 64 * MIB, args.runs
    if args.quick:
        size, small, runs = 256 * MIB, 16 * MIB, 1
    if not os.path.isdir(args.dir):
        ap.error(f"--dir {args.dir} is not a directory")
    need = size * 4
    if shutil.disk_usage(args.dir).free < need:
        ap.error(f"{args.dir} has less than the {need / GIB:.1f} GiB of scratch space this needs")
    qemu_ok = not args.no_qemu
    if qemu_ok:
        missing = [t for t in ("qemu-img", "qemu-nbd") if shutil.which(t) is None]
        has_nbd = subprocess.run(["/usr/bin/python3", "-c", "import nbd"], capture_output=True).returncode == 0
        if missing or not has_nbd:
            print(f"qcow2 peer skipped: missing {', '.join(missing + ([] if has_nbd else ['python3-libnbd']))}")
            qemu_ok = False
    mnt, fstype, opts = mount_of(args.dir)
    plan = Plan(size, small, args.seed)
    tmp = tempfile.mkdtemp(prefix="vdisk-delete-bench-", dir=args.dir)
    print(f"snapshot create/delete benchmark, {datetime.date.today()}, {machine()}")
    qv = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout.split("\n")[0] \
        if qemu_ok else "no qemu"
    print(f"scratch {tmp} on {fstype} ({mnt}, {opts}); {qv}")
    if fstype in ("tmpfs", "ramfs"):
        print("WARNING: scratch is in memory: hole punching and syncs cost nothing there")
    print(f"disk {size // MIB} MiB, {plan.rewrite:,} scattered 4 KiB rewrites "
          f"({plan.qcow2_clusters:,} of {size // QCOW2_CLUSTER:,} qcow2 64 KiB clusters touched), "
          f"{runs} run(s), load average {os.getloadavg()[0]:.1f}\n", flush=True)
    v, q = [], []
    try:
        for run in range(runs):
            v.append(vdisk_run(tmp, plan, run, io=not args.no_io, trace=args.trace))
            if qemu_ok:
                q.append(qcow2_run(tmp, plan, run))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (the machine may be shared)")
    report(plan, v, q, io=not args.no_io)
    return 0


if __name__ == "__main__":
    sys.exit(main())
