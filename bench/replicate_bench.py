"""Changed blocks and replication: vdisk diff, vdisk send, vdisk receive.

    .venv/bin/python bench/replicate_bench.py [--quick] [--size 16G] [--runs 5] [--dir DIR] [--no-receive]

A 16 GiB disk (4 KiB blocks) is filled whole, in chunks of 1-48 blocks
written in a shuffled order (as verify_bench.py does), so its map holds one
extent per chunk (about 700,000) rather than a few huge ones; the same
bytes go to a raw file beside it. Snapshot ``base``. Then for each of 0.1%,
1% and 10% of the blocks: revert to ``base``, rewrite that share of the
blocks in runs of 1-16 blocks at random places, snapshot ``cN``.

Measured, for each pair (``base``, ``cN``):

* ``diff`` - :func:`vdisk.snapshots.diff.diff` in process (median of
  ``--runs``), and ``vdisk diff --json`` as a command (one run: Python's
  start included), beside a full read-and-compare of the two snapshots
  through the engine (every block read and checked, then compared; once,
  on the 0.1% pair). Target: at 0.1% changed, diff under 2% of the full
  compare's time.
* ``send`` - ``vdisk send cN --from base`` in process into a byte counter:
  stream size beside the changed data diff reports (target: within 5%),
  and its time and rate beside ``qemu-img convert -O raw`` of the whole
  raw file (what shipping the disk without change tracking costs).
* ``receive`` (unless ``--no-receive``) - ``vdisk send | vdisk receive``
  as a shell runs it (two processes, a pipe): ``base`` in full into a new
  disk, then each incremental on top of it (revert to ``base`` between
  them); time and rate of the data applied.

Everything runs from the page cache where it fits (this machine: 24 GiB).
Scratch space: about 3 x the size under ``--dir`` (default /var/tmp).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

from vdisk import Disk
from vdisk.replicate.receive import receive
from vdisk.replicate.send import send
from vdisk.snapshots.diff import diff
from vdisk.units import format_size, parse_size

from benchlib import machine  # noqa: E402  (bench/ is the script's directory)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BS = 4 * KIB
POOL = 64 * MIB
FRACTIONS = (0.001, 0.01, 0.1)


class Counter:
    """A binary sink that only counts (stands in for a pipe to another host)."""

    def __init__(self):
        self.n = 0

    def write(self, b):
        self.n += len(b)
        return len(b)

    def flush(self):
        pass


def fill(path: str, raw: str, size: int, rng: random.Random, pool: bytes):
    blocks = size // BS
    chunks = []
    pos = 0
    while pos < blocks:
        n = min(rng.randrange(1, 49), blocks - pos)
        chunks.append((pos, n))
        pos += n
    rng.shuffle(chunks)
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        with Disk.create(path, size, BS) as d:
            for b, n in chunks:
                off = rng.randrange(0, POOL - n * BS) & ~(BS - 1)
                data = pool[off:off + n * BS]
                d.write(b * BS, data)
                os.pwrite(fd, data, b * BS)
            d.flush()
            d.create_snapshot("base")
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(chunks)


def change(d, fraction: float, rng: random.Random, pool: bytes) -> int:
    blocks = d.size // BS
    want = int(blocks * fraction)
    done = 0
    while done < want:
        n = min(rng.randrange(1, 17), want - done)
        b = rng.randrange(0, blocks - n)
        off = rng.randrange(0, POOL - n * BS) & ~(BS - 1)
        d.write(b * BS, pool[off:off + n * BS])
        done += n
    d.flush()
    return done


def full_compare(d, a: str, b: str) -> tuple[float, int]:
    va, vb = d.open_snapshot(a), d.open_snapshot(b)
    t = time.perf_counter()
    differ = 0
    step = 4 * MIB
    for off in range(0, va.size, step):
        if va.read(off, step) != vb.read(off, step):
            differ += 1
    return time.perf_counter() - t, differ


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rate(n: int, s: float) -> str:
    return f"{n / s / 1e6:,.0f} MB/s" if s > 0 else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 1 GiB disk")
    ap.add_argument("--size", default=None, help="disk size (default 16G; 1G with --quick)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--no-receive", action="store_true")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    size = parse_size(args.size or ("1G" if args.quick else "16G"))
    rng = random.Random(args.seed)
    pool = rng.randbytes(POOL)
    top = tempfile.mkdtemp(prefix="vdisk-replicate-bench-", dir=args.dir)
    print(f"# replicate_bench {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}; scratch {top}")
    results = {"size": size, "rows": []}
    try:
        path, raw = os.path.join(top, "src.vdisk"), os.path.join(top, "src.raw")
        t, chunks = timed(lambda: fill(path, raw, size, rng, pool))
        print(f"filled {format_size(size)} in {chunks:,} shuffled chunks in {t:.1f} s")
        with Disk.open(path) as d:
            for f in FRACTIONS:
                d.revert("base")
                n = change(d, f, rng, pool)
                d.create_snapshot(f"c{f}")
                print(f"c{f}: {n:,} blocks rewritten ({format_size(n * BS)})")
        rows = []
        with Disk.open(path, readonly=True) as d:
            leaves = d.forest.tree("snap/base").height
            print(f"snapshot tree height {leaves}")
            full_s, differ = full_compare(d, "base", f"c{FRACTIONS[0]}")
            print(f"full read-and-compare of base and c{FRACTIONS[0]}: {full_s:.2f} s "
                  f"({differ} 4 MiB pieces differ)")
            for f in FRACTIONS:
                name = f"c{f}"
                samples = []
                for _ in range(args.runs):
                    s, r = timed(lambda: diff(d, "base", name))
                    samples.append(s)
                api = statistics.median(samples)
                sink = Counter()
                send_s, summary = timed(lambda: send(d, name, sink, base="base"))
                rows.append({"fraction": f, "changed_bytes": r.data_bytes, "ranges": len(r.changes),
                             "nodes_read": r.nodes_read, "shared_skipped": r.shared_skipped,
                             "diff_s": api, "stream_bytes": sink.n, "send_s": send_s})
        for row in rows:
            name = f"c{row['fraction']}"
            t = time.perf_counter()
            out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vdisk"), "diff", path, "base",
                                  name, "--json"], capture_output=True, check=True)
            row["diff_cli_s"] = time.perf_counter() - t
            assert json.loads(out.stdout)["data_bytes"] == row["changed_bytes"]
        out_raw = os.path.join(top, "copy.raw")
        qemu_s, _ = timed(lambda: subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", raw, out_raw],
                                                  check=True))
        os.unlink(out_raw)
        recv = {}
        if not args.no_receive:
            dst = os.path.join(top, "dst.vdisk")
            recv["full"] = piped(path, dst, "base", None)
            for f in FRACTIONS:
                with Disk.open(dst) as d:
                    d.revert("base")
                recv[f] = piped(path, dst, f"c{f}", "base")
        print()
        print(f"| changed | changed data | ranges | nodes read | diff (API) | diff (command) | "
              f"diff / full compare | stream | stream / changed | send | send rate |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['fraction'] * 100:g}% | {format_size(row['changed_bytes'])} | {row['ranges']:,} | "
                  f"{row['nodes_read']:,} | {row['diff_s'] * 1000:.1f} ms | {row['diff_cli_s']:.2f} s | "
                  f"{row['diff_s'] / full_s * 100:.3f}% | {format_size(row['stream_bytes'])} | "
                  f"{row['stream_bytes'] / row['changed_bytes']:.4f} | {row['send_s']:.2f} s | "
                  f"{rate(row['changed_bytes'], row['send_s'])} |")
        print()
        print(f"full read-and-compare: {full_s:.2f} s ({rate(2 * size, full_s)} read); "
              f"qemu-img convert of the whole raw image: {qemu_s:.2f} s ({rate(size, qemu_s)})")
        for k, (s, summary) in recv.items():
            what = "full" if k == "full" else f"{k * 100:g}%"
            n = summary.applied_bytes
            print(f"send | receive {what}: {format_size(n)} in {s:.2f} s ({rate(n, s)})")
        results.update(rows=rows, full_compare_s=full_s, qemu_convert_s=qemu_s,
                       receive={str(k): (s, v.applied_bytes) for k, (s, v) in recv.items()})
        print()
        print(json.dumps(results))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def piped(src: str, dst: str, name: str, base):
    """``vdisk send SRC NAME [--from BASE] | vdisk receive DST``, two processes and a pipe: (seconds, summary)."""
    vdisk = os.path.join(os.path.dirname(sys.executable), "vdisk")
    frm = f" --from {base}" if base else ""
    line = f"{vdisk} send {src} {name}{frm} --quiet | {vdisk} receive {dst} --quiet --json"
    start = time.perf_counter()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, SimpleNamespace(**json.loads(r.stdout))


if __name__ == "__main__":
    main()
