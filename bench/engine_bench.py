"""In-process disk engine benchmark, beside a raw file doing the same work.

    .venv/bin/python bench/engine_bench.py [--quick] [--runs 3]

Rows (each the median of --runs runs, vdisk and raw in the same run):
  4 KiB random write / read, 1 MiB sequential write / read on a 4 GiB disk,
  with 0 and with 10 snapshots taken during the write phase; blake3-only speed
  of 4 KiB blocks (the floor of checksummed I/O in Python); 4 KiB random read
  latency with 1 and with 200 snapshots in the chain.

Raw = os.pwrite / os.pread on a sparse file in the same directory. Both run
from the page cache (flush at the end of each write phase is included for
vdisk; raw gets one fdatasync at the end, too), which is the honest peer for
an in-process engine: it shows what the engine's own work costs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import blake3

from vdisk import Disk

from benchlib import machine  # noqa: E402  (bench/ is the script's directory)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30




class Raw:
    def __init__(self, path, size):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self.fd, size)

    def write(self, off, data):
        os.pwrite(self.fd, data, off)

    def read(self, off, n):
        return os.pread(self.fd, n, off)

    def flush(self):
        os.fdatasync(self.fd)

    def close(self):
        os.close(self.fd)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_once(tmp, size, rand_ops, seq_bytes, snaps_during_write, seed):
    rng = random.Random(seed)
    blocks = size // (4 * KIB)
    offsets = [rng.randrange(blocks) * 4 * KIB for _ in range(rand_ops)]
    block = rng.randbytes(4 * KIB)
    chunk = rng.randbytes(MIB)
    seq_chunks = seq_bytes // MIB
    res = {}
    for kind in ("vdisk", "raw"):
        path = os.path.join(tmp, kind)
        dev = Disk.create(path, size) if kind == "vdisk" else Raw(path, size)
        snap_every_seq = max(1, seq_chunks // (snaps_during_write + 1)) if snaps_during_write else 0
        snap_every_rand = max(1, rand_ops // (snaps_during_write + 1)) if snaps_during_write else 0
        n_snap = [0]

        def maybe_snap(i, every):
            if kind == "vdisk" and every and i and i % every == 0 and n_snap[0] < snaps_during_write:
                dev.create_snapshot(f"s{n_snap[0]}")
                n_snap[0] += 1

        def seq_write():
            for i in range(seq_chunks):
                maybe_snap(i, snap_every_seq)
                dev.write(i * MIB, chunk)
            dev.flush()

        def seq_read():
            for i in range(seq_chunks):
                dev.read(i * MIB, MIB)

        def rand_write():
            for i, off in enumerate(offsets):
                maybe_snap(i, snap_every_rand)
                dev.write(off, block)
            dev.flush()

        def rand_read():
            for off in offsets:
                dev.read(off, 4 * KIB)

        res[kind] = {
            "1M seq write": seq_chunks * MIB / timed(seq_write),
            "1M seq read": seq_chunks * MIB / timed(seq_read),
            "4K rand write": rand_ops / timed(rand_write),
            "4K rand read": rand_ops / timed(rand_read),
        }
        dev.close()
        shutil.rmtree(path) if kind == "vdisk" else os.unlink(path)
    return res


def read_latency(tmp, n_snapshots, ops, seed):
    """4 KiB random read latency (us) with n snapshots in the chain."""
    rng = random.Random(seed)
    path = os.path.join(tmp, f"chain{n_snapshots}")
    size = 256 * MIB
    blocks = size // (4 * KIB)
    with Disk.create(path, size) as d:
        for i in range(0, size, MIB):
            d.write(i, rng.randbytes(MIB))
        per_snap = max(1, blocks // 50 // max(1, n_snapshots))
        for s in range(n_snapshots):
            for _ in range(per_snap):
                d.write(rng.randrange(blocks) * 4 * KIB, rng.randbytes(4 * KIB))
            d.create_snapshot(f"s{s}")
        offs = [rng.randrange(blocks) * 4 * KIB for _ in range(ops)]
        t = timed(lambda: [d.read(o, 4 * KIB) for o in offs])
    shutil.rmtree(path)
    return t / ops * 1e6


def blake3_speed(n=20000):
    data = os.urandom(4 * KIB)
    t = timed(lambda: [blake3.blake3(data).digest(16) for _ in range(n)])
    return n * 4 * KIB / t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the test files (default: a temp dir)")
    args = ap.parse_args(argv)
    size = 4 * GIB
    rand_ops, seq_bytes, runs, lat_ops = 20000, 1 * GIB, args.runs, 20000
    if args.quick:
        rand_ops, seq_bytes, runs, lat_ops = 3000, 128 * MIB, 1, 2000
    tmp = tempfile.mkdtemp(prefix="vdisk-bench-", dir=args.dir)
    try:
        print(f"vdisk engine benchmark, {datetime.date.today()}, {machine()}")
        print(f"disk 4 GiB, {rand_ops} random 4 KiB ops, {seq_bytes // MIB} MiB sequential, median of {runs}")
        b3 = blake3_speed()
        print(f"blake3 of 4 KiB blocks from Python alone: {b3 / 1e9:.2f} GB/s\n")
        targets = {"1M seq write": ("ratio", 0.35), "1M seq read": ("ratio", 0.35),
                   "4K rand write": ("ops", 20000), "4K rand read": ("ops", None)}
        base = None
        print(f"{'row':<16}{'snaps':>6}{'vdisk':>14}{'raw':>14}{'ratio':>8}   target")
        for snaps in (0, 10):
            rows = [run_once(tmp, size, rand_ops, seq_bytes, snaps, seed=r) for r in range(runs)]
            med = {kind: {k: statistics.median(r[kind][k] for r in rows) for k in rows[0][kind]}
                   for kind in ("vdisk", "raw")}
            if snaps == 0:
                base = med["vdisk"]
            for k, v in med["vdisk"].items():
                raw = med["raw"][k]
                unit = (lambda x: f"{x / 1e6:9.0f} MB/s") if "1M" in k else (lambda x: f"{x:9.0f} op/s")
                kind, t = targets[k]
                if kind == "ratio":
                    verdict = f">= {t:.0%} of raw: {'PASS' if v / raw >= t else 'MISS'}"
                elif t:
                    verdict = f">= {t} op/s: {'PASS' if v >= t else 'MISS'}"
                else:
                    verdict = ""
                if snaps and "write" in k:
                    drop = 1 - v / base[k]
                    verdict += f"; vs 0 snaps {-drop:+.0%} ({'PASS' if drop <= 0.10 else 'MISS'} <= 10% loss)"
                print(f"{k:<16}{snaps:>6}{unit(v):>14}{unit(raw):>14}{v / raw:>8.2f}   {verdict}")
        print()
        for n in (1, 200):
            print(f"4K random read latency, {n:>3} snapshots in the chain: "
                  f"{read_latency(tmp, n, lat_ops, seed=n):7.1f} us")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
