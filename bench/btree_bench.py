#!/usr/bin/env python3
"""Benchmark of the copy-on-write B+tree (vdisk.btree) on a real LMDB store.

One file over 500 lines on purpose: a benchmark is run and read as one
script, and its rows share the setup and the timing helpers.

Usage (from the project root)::

    .venv/bin/python bench/btree_bench.py            # 1,000,000 keys, about a minute
    .venv/bin/python bench/btree_bench.py --quick    # 100,000 keys, a few seconds
    .venv/bin/python bench/btree_bench.py --profile --profile-keys 1000000

The tree has ``Layout("u64", "bytes:16")`` - the shape of a disk extent map
(block number -> 16-byte extent record); ``--value u64`` measures u64 -> u64
(the shape of vdisk's LBA and VBA maps) instead. Every measure uses an
:class:`LmdbNodeStore` in a temporary directory (removed at the end), opened
exactly as vdisk opens it (``sync=True``: each commit is an fsync).

Measures (each the median of ``--repeat`` runs, default 3; ``--fast`` runs the
two full-size loads only once):

* insert        N keys in random order, ``forest.commit()`` every 10,000 ops;
                amortized, commits included (the share spent in commit is
                shown too).                            target >= 100,000/s
* insert_sorted N sequential keys via ``insert_sorted`` in runs of 10,000,
                a commit after each run; commits included.
* get warm      N random existing keys, every node already decoded in the
                forest's cache.                        target >= 200,000/s
* get cold      200,000 random keys (N/5 with fewer keys) on a freshly opened
                store + Forest: every first touch of a node is an LMDB read +
                checksum + decode. The OS page cache is still warm.
* scan          full ``items()``, entries/s, warm and cold.
* commit        wall time of one ``forest.commit()`` after 10,000 random
                updates (and how many nodes it wrote).
* COW           after ``forest.snapshot()``: 10,000 updates of distinct random
                existing keys; new node ids allocated per update (round 1), and
                for a second round of updates to the same keys (~0: the copies
                are exclusive to the tree now). Tree height is reported.

Rates are wall clock (``time.perf_counter``). The ``cpu s`` column is this
process's CPU time for the same run: when it is well below ``wall s`` either
fsync waits (commits) or other processes competing for the CPU account for the
difference - check the load average printed in the header.

``--profile`` additionally runs cProfile over the insert path and the warm and
cold get paths (``--profile-keys``, default 200,000) and prints the top
functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import gc
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    from vdisk.btree import Forest, Layout, LmdbNodeStore
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vdisk.btree import Forest, Layout, LmdbNodeStore

LAYOUT = Layout("u64", "bytes:16")
BATCH = 10_000          # ops per commit / keys per insert_sorted run
COW_UPDATES = 10_000    # updates after a snapshot
COLD_GETS = 200_000
TREE = "disk"

perf = time.perf_counter
cpu = time.process_time


# --------------------------------------------------------------------- helpers

def value_for(key: int, gen: int = 0):
    """A 16-byte extent record (or a u64); ``gen`` makes an update change the value."""
    if LAYOUT.value == "u64":
        return key << 16 | gen
    width = LAYOUT.value_type[1]
    return (key.to_bytes(8, "little") + gen.to_bytes(8, "little")).ljust(width, b"\0")[:width]


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info() -> list[str]:
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        import lmdb
        lmdb_v = ".".join(map(str, lmdb.version())) + f" (py-lmdb {lmdb.__version__})"
    except Exception:  # informational only
        lmdb_v = "?"
    try:
        from importlib.metadata import version
        blake3_v = version("blake3")
    except Exception:
        blake3_v = "?"
    return [
        f"date      {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine   {platform.node()}  {platform.system()} {platform.release()} {platform.machine()}",
        f"cpu       {cpu_model}  (nproc {usable}, os.cpu_count {os.cpu_count()})",
        f"python    {platform.python_implementation()} {sys.version.split()[0]}  ({sys.executable})",
        f"libs      lmdb {lmdb_v}, blake3 {blake3_v}",
        f"load      {_loadavg()} at start (other processes on the machine skew wall-clock numbers)",
    ]


class Timer:
    """Wall and CPU seconds of a ``with`` block."""

    def __enter__(self):
        self._w, self._c = perf(), cpu()
        return self

    def __exit__(self, *exc):
        self.wall = perf() - self._w
        self.cpu = cpu() - self._c


class Result:
    def __init__(self, name, ops, walls, cpus, unit="ops/s", target=None, note="",
                 rate_text=None):
        self.name, self.ops = name, ops
        self.seconds = statistics.median(walls)
        self.cpu = statistics.median(cpus)
        self.runs = len(walls)
        self.unit, self.target, self.note = unit, target, note
        self.rate_text = rate_text

    @property
    def rate(self):
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


class Bench:
    def __init__(self, args):
        self.args = args
        self.n = args.keys
        self.rng = random.Random(args.seed)
        self.tmp = tempfile.mkdtemp(prefix="btree_bench.", dir=args.dir)
        self.results: list[Result] = []
        self._stores = 0

    # ----------------------------------------------------------- plumbing

    def new_path(self) -> str:
        self._stores += 1
        path = os.path.join(self.tmp, f"store{self._stores}")
        os.mkdir(path)
        return path

    @staticmethod
    def open(path) -> tuple[LmdbNodeStore, Forest]:
        store = LmdbNodeStore(path)
        return store, Forest(store)

    def repeats(self, cheap: bool) -> int:
        return 1 if (self.args.fast and not cheap) else self.args.repeat

    def log(self, msg):
        if not self.args.silent:
            print(f"  .. {msg}", file=sys.stderr, flush=True)

    def add(self, r: Result):
        self.results.append(r)
        self.log(f"{r.name}: {r.rate_text or f'{r.rate:,.0f} {r.unit}'}")

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ----------------------------------------------------------- measures

    def load_random(self, path, keys, vals) -> tuple[Timer, float]:
        """Insert keys in the given (random) order, commit every BATCH ops.

        Returns the timer of the whole load and the wall seconds in commit."""
        store, forest = self.open(path)
        try:
            t = forest.create_tree(TREE, LAYOUT)
            forest.commit()
            insert, commit = t.insert, forest.commit
            in_commit = 0.0
            n = len(keys)
            with Timer() as tm:
                for a in range(0, n, BATCH):
                    for i in range(a, min(a + BATCH, n)):
                        insert(keys[i], vals[i])
                    tc = perf()
                    commit()
                    in_commit += perf() - tc
            assert len(t) == n
            return tm, in_commit
        finally:
            store.close()

    def bench_insert(self):
        n = self.n
        order = list(range(n))
        self.rng.shuffle(order)
        vals = [value_for(k) for k in order]
        walls, cpus, commits = [], [], []
        for r in range(self.repeats(cheap=False)):
            path = self.new_path()
            tm, in_commit = self.load_random(path, order, vals)
            walls.append(tm.wall)
            cpus.append(tm.cpu)
            commits.append(in_commit)
            if r == 0:
                self.main_path = path  # kept: the tree for the read measures
            else:
                shutil.rmtree(path, ignore_errors=True)
        med = statistics.median(walls)
        c = commits[walls.index(med)] if med in walls else statistics.median(commits)
        ncommits = -(-n // BATCH)
        self.add(Result(f"insert random, commit/{BATCH:,}", n, walls, cpus, target=100_000,
                        note=f"{ncommits} commits = {c:.2f} s ({c / med:.0%}); "
                             f"excl. commits {n / (med - c):,.0f}/s"))

    def bench_insert_sorted(self):
        n = self.n
        keys = list(range(n))
        vals = [value_for(k) for k in keys]
        walls, cpus = [], []
        for _ in range(self.repeats(cheap=False)):
            path = self.new_path()
            store, forest = self.open(path)
            try:
                t = forest.create_tree(TREE, LAYOUT)
                forest.commit()
                with Timer() as tm:
                    for a in range(0, n, BATCH):
                        t.insert_sorted(zip(keys[a:a + BATCH], vals[a:a + BATCH]))
                        forest.commit()
                walls.append(tm.wall)
                cpus.append(tm.cpu)
                assert len(t) == n
                self.sorted_height = t.height
            finally:
                store.close()
                shutil.rmtree(path, ignore_errors=True)
        self.add(Result(f"insert_sorted, runs of {BATCH:,}", n, walls, cpus,
                        note=f"{-(-n // BATCH)} commits incl."))

    def bench_reads(self):
        n = self.n
        store, forest = self.open(self.main_path)
        try:
            t = forest.tree(TREE)
            assert len(t) == n, (len(t), n)
            self.height = t.height
            # Warm every node: one full scan decodes all of them.
            for _ in t.items():
                pass
            cache = getattr(forest, "_cache", None)
            if cache is not None:
                self.nodes_cached = len(cache)
                self.leaves = sum(1 for nd in cache.values() if nd.leaf)

            probe = list(range(n))
            self.rng.shuffle(probe)
            get = t.get
            walls, cpus = [], []
            for _ in range(self.repeats(cheap=True)):
                with Timer() as tm:
                    for k in probe:
                        get(k)
                walls.append(tm.wall)
                cpus.append(tm.cpu)
            for k in probe[:1000]:  # correctness spot check, not timed
                assert get(k) == value_for(k), k
            self.add(Result("get random, warm cache", n, walls, cpus, target=200_000))

            walls, cpus = [], []
            for _ in range(self.repeats(cheap=True)):
                count = 0
                with Timer() as tm:
                    for _kv in t.items():
                        count += 1
                walls.append(tm.wall)
                cpus.append(tm.cpu)
                assert count == n
            self.add(Result("scan items(), warm cache", n, walls, cpus, unit="entries/s"))
        finally:
            store.close()

        m = min(COLD_GETS, max(1, n // 5)) if n < 5 * COLD_GETS else COLD_GETS
        walls, cpus, loads = [], [], []
        for _ in range(self.repeats(cheap=True)):
            probe = self.rng.sample(range(n), m)
            store, forest = self.open(self.main_path)
            try:
                t = forest.tree(TREE)
                get = t.get
                with Timer() as tm:
                    for k in probe:
                        get(k)
                walls.append(tm.wall)
                cpus.append(tm.cpu)
                loads.append(len(getattr(forest, "_cache", ())))
            finally:
                store.close()
        self.add(Result("get random, cold (reopened)", m, walls, cpus,
                        note=f"{int(statistics.median(loads)):,} nodes read+decoded per run"))

        walls, cpus = [], []
        for _ in range(self.repeats(cheap=True)):
            store, forest = self.open(self.main_path)
            try:
                t = forest.tree(TREE)
                with Timer() as tm:
                    count = sum(1 for _ in t.items())
                walls.append(tm.wall)
                cpus.append(tm.cpu)
                assert count == n
            finally:
                store.close()
        self.add(Result("scan items(), cold (reopened)", n, walls, cpus, unit="entries/s"))

    def bench_commit(self):
        """One commit after BATCH random updates; every node exclusive, resident."""
        n = self.n
        store, forest = self.open(self.main_path)
        try:
            t = forest.tree(TREE)
            for _ in t.items():  # make the whole tree resident: time the commit only
                pass
            walls, cpus, written, gen = [], [], [], 1000
            k = min(BATCH, n)
            for _ in range(self.repeats(cheap=True)):
                keys = self.rng.sample(range(n), k)
                gen += 1
                for key in keys:
                    t.insert(key, value_for(key, gen))
                dirty = getattr(forest, "_dirty", None)
                written.append(len(dirty) if dirty is not None else 0)
                with Timer() as tm:
                    forest.commit()
                walls.append(tm.wall)
                cpus.append(tm.cpu)
            med = statistics.median(walls)
            nodes = int(statistics.median(written))
            self.add(Result(f"commit after {k:,} updates", 1, walls, cpus, unit="commits/s",
                            rate_text=f"{med * 1e3:,.0f} ms/commit",
                            note=f"{nodes:,} nodes written, {med / max(nodes, 1) * 1e6:.1f} us/node"))
        finally:
            store.close()

    def bench_cow(self):
        """New nodes per update after a snapshot, then on the same keys again."""
        n = self.n
        store, forest = self.open(self.main_path)
        try:
            t = forest.tree(TREE)
            per1, per2, gen = [], [], 100
            k = min(COW_UPDATES, n)
            for r in range(self.repeats(cheap=True)):
                forest.snapshot(TREE, f"snap{r}")
                forest.commit()
                keys = self.rng.sample(range(n), k)
                gen += 1
                before = forest.next_node_id
                for key in keys:
                    t.insert(key, value_for(key, gen))
                per1.append((forest.next_node_id - before) / k)
                gen += 1
                before = forest.next_node_id
                for key in keys:
                    t.insert(key, value_for(key, gen))
                per2.append((forest.next_node_id - before) / k)
                with Timer() as tm:
                    forest.commit()
                self.log(f"commit after snapshot round {r}: {tm.wall * 1e3:.0f} ms")
            self.cow = (statistics.median(per1), statistics.median(per2), k)
            self.height = t.height
        finally:
            store.close()

    # ----------------------------------------------------------- profile

    def profile(self, top: int) -> list[str]:
        n = min(self.n, self.args.profile_keys)
        order = list(range(n))
        self.rng.shuffle(order)
        vals = [value_for(k) for k in order]
        path = self.new_path()
        out = []
        pr = cProfile.Profile()
        pr.enable()
        self.load_random(path, order, vals)
        pr.disable()
        out.append(self._stats(pr, f"cProfile: insert {n:,} random keys, commit/{BATCH:,}", top))
        self.rng.shuffle(order)
        for label in ("cold (reopened; first touch of each node loads it)", "warm"):
            store, forest = self.open(path)
            try:
                get = forest.tree(TREE).get
                if label == "warm":
                    for k in order:
                        get(k)
                pr = cProfile.Profile()
                pr.enable()
                for k in order:
                    get(k)
                pr.disable()
                out.append(self._stats(pr, f"cProfile: get {n:,} random keys, {label}", top))
            finally:
                store.close()
        shutil.rmtree(path, ignore_errors=True)
        return out

    @staticmethod
    def _stats(pr, title, top):
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
        lines = s.getvalue().splitlines()
        for i, line in enumerate(lines):
            if "ncalls" in line:
                lines = lines[i:]
                break
        return f"--- {title} ---\n" + "\n".join(lines).rstrip()


# --------------------------------------------------------------------- report

def render(b: Bench, elapsed: float) -> str:
    rows = [("measure", "ops", "wall s", "cpu s", "rate", "target", "result", "notes")]
    missed = []
    for r in b.results:
        rate = r.rate_text or f"{r.rate:,.0f} {r.unit}"
        if r.target is None:
            target, verdict = "-", "-"
        else:
            target = f">= {r.target:,}/s"
            verdict = "PASS" if r.rate >= r.target else "MISS"
            if verdict == "MISS":
                missed.append(f"{r.name} ({r.rate:,.0f} < {r.target:,}/s, "
                              f"{r.rate / r.target:.0%} of target)")
        rows.append((r.name, f"{r.ops:,}", f"{r.seconds:.3f}", f"{r.cpu:.3f}", rate, target,
                     verdict, r.note))
    if hasattr(b, "cow"):
        p1, p2, k = b.cow
        note = f"x 4 KiB = {p1 * 4096:,.0f} B/op"
        leaves = getattr(b, "leaves", None)
        if leaves:
            # distinct leaves hit by k random updates (+ the few inner nodes above them)
            expect = leaves * (1 - (1 - 1 / leaves) ** k) / k
            note += f"; distinct leaves hit/update {expect:.3f}"
        rows.append(("COW: new nodes/update after snapshot", f"{k:,}", "-", "-",
                     f"{p1:.3f} nodes/op", "-", "-", note))
        ok = p2 < 0.01
        rows.append(("COW: same keys again (exclusive)", f"{k:,}", "-", "-",
                     f"{p2:.3f} nodes/op", "~0", "PASS" if ok else "MISS", ""))
        if not ok:
            missed.append(f"second-round COW allocates {p2:.3f} nodes/op (expected ~0)")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for idx, row in enumerate(rows):
        cells = [str(c).rjust(w) if i in (1, 2, 3, 4) else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if idx == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    desc = (f"tree: {b.n:,} keys, layout {LAYOUT.key} -> {LAYOUT.value}, leaf cap "
            f"{LAYOUT.leaf_capacity}, inner cap {LAYOUT.inner_capacity}, "
            f"height {getattr(b, 'height', '?')}")
    if hasattr(b, "sorted_height"):
        desc += f" (insert_sorted tree: {b.sorted_height})"
    if hasattr(b, "leaves"):
        desc += (f", {b.nodes_cached:,} nodes ({b.leaves:,} leaves, "
                 f"{b.n / b.leaves:.0f} entries/leaf)")
    lines.append(desc)
    lines.append(f"missed targets: {'; '.join(missed) if missed else 'none'}")
    lines.append(f"total wall time {elapsed:.1f} s; load avg at end {_loadavg()}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=None, help="number of keys (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 keys: a fast smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measure (median; default 3)")
    ap.add_argument("--fast", action="store_true",
                    help="run the two full-size loads once instead of --repeat times")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--value", default="bytes:16",
                    help="value field: u64 or bytes:N (N >= 16; default bytes:16)")
    ap.add_argument("--dir", default=None, help="parent of the temporary store directory")
    ap.add_argument("--profile", action="store_true", help="also cProfile insert and get")
    ap.add_argument("--profile-keys", type=int, default=200_000,
                    help="keys in the profiled runs (default 200,000; capped at --keys)")
    ap.add_argument("--profile-top", type=int, default=18, help="functions shown per profile")
    ap.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.keys is None:
        args.keys = 100_000 if args.quick else 1_000_000
    if args.keys < 1 or args.repeat < 1:
        ap.error("--keys and --repeat must be >= 1")
    global LAYOUT
    try:
        LAYOUT = Layout("u64", args.value)
    except ValueError as e:
        ap.error(str(e))
    if LAYOUT.value != "u64" and LAYOUT.value_type[1] < 16:
        ap.error("--value bytes:N needs N >= 16 (the record holds the key and a generation)")

    print("vdisk B+tree benchmark (bench/btree_bench.py)")
    for line in machine_info():
        print(line)
    b = Bench(args)
    print(f"store     LmdbNodeStore (sync=True) in {b.tmp} (removed at exit); "
          f"{args.keys:,} keys, seed {args.seed}, median of {args.repeat}"
          + (" (loads once)" if args.fast else "") + (" [quick]" if args.quick else ""))
    print(f"gc        {'enabled' if gc.isenabled() else 'disabled'}")
    print(flush=True)
    t0 = perf()
    try:
        b.bench_insert()
        b.bench_insert_sorted()
        b.bench_reads()
        b.bench_commit()  # before the snapshots, so every node is exclusive
        b.bench_cow()
        print(render(b, perf() - t0), flush=True)
        if args.profile:
            for block in b.profile(args.profile_top):
                print()
                print(block, flush=True)
    finally:
        b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
