"""Verify benchmark: 1 snapshot vs 32 of a fragmented disk, beside qemu-img check.

    .venv/bin/python bench/verify_bench.py [--quick] [--runs 5] [--dir DIR] [--data]

The disk (4 GiB, 4 KiB blocks) is filled in chunks of 1-48 blocks written in
a shuffled order, so neighbouring chunks get unrelated VBAs and the running
point's map holds one extent per chunk (at least 30,000). Then, for each
snapshot: take it, and rewrite 1% of the disk in 4 contiguous runs at random
places (as real workloads cluster their writes).

``vdisk verify`` (metadata, through the Python API; the disk closed) is timed
with 1 snapshot (a copy of the metadata taken then) and with 32, in turns so
that both see the same machine load: target verify(32) <= 2 x verify(1), in
wall and in CPU time. Beside it, the same chunks, snapshots and runs
are written to a qcow2 image with ``qemu-io`` and ``qemu-img snapshot -c``,
and ``qemu-img check`` is timed at 1 and 32 internal snapshots. With
``--data``, ``verify --data`` (every block read back and checksummed) is
timed once at 32 snapshots too.

Issue 13's target: ``vdisk verify`` (metadata only) of the 32-snapshot disk
within 5x ``qemu-img check`` of the same data in qcow2 with 32 internal
snapshots, in wall time (the in-process figure, as the issue measured it).
Beside it, ``vdisk verify DISK`` as the command a user runs at boot (a new
Python process: interpreter and imports included) is timed in the same turns,
and its ratio printed too.

Figures are medians of ``--runs`` runs, from the page cache (both tools).
``--quick`` uses a 512 MiB disk (about 4,000 extents) for a first look.
Scratch space: about 1.35 x the disk size for each of vdisk and qcow2 (both
kept until the end). The last state's rows (vdisk verify in process and as a
command, qemu-img check) are timed in the same turns, one of each per turn.

``--against CHECKOUT`` also times the verify of another checkout of vdisk
(a ``git worktree`` of an older commit, say) on the same disk, in the same
turns: each turn runs one child process per tree (this one and the other),
which verifies once to warm up and then ``--child-runs`` times, timed
inside the child (imports excluded); the row is the median of those, and
the ratio new / old is printed. The children map the checkout's folders
onto the ``vdisk`` package as pyproject.toml's package-dir does, so the
checkout needs no install.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from vdisk import Disk
from vdisk.snapshots.verify import verify

from benchlib import code_version, machine  # noqa: E402  (bench/ is the script's directory)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BS = 4 * KIB
VDISK = [sys.executable, "-m", "vdisk.cli.main"]
VS_QEMU = 5.0       # issue 13: vdisk verify within 5x qemu-img check




def plan(size: int, snapshots: int, seed: int):
    """The chunks of the fill, and the 4 rewrite runs after each snapshot (byte ranges)."""
    rng = random.Random(seed)
    blocks = size // BS
    chunks = []
    pos = 0
    while pos < blocks:
        n = min(rng.randrange(1, 49), blocks - pos)
        chunks.append((pos * BS, n * BS))
        pos += n
    rng.shuffle(chunks)
    run_blocks = max(1, blocks // 100 // 4)
    rewrites = [[(rng.randrange(blocks - run_blocks) * BS, run_blocks * BS) for _ in range(4)]
                for _ in range(snapshots)]
    return chunks, rewrites


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its children, result)."""
    def cpu():
        me, kids = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.user + me.system + kids.ru_utime + kids.ru_stime
    c, t = cpu(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, cpu() - c, out


def verify_command(path):
    """``vdisk verify PATH`` as a user runs it: a new process, metadata only."""
    p = subprocess.run(VDISK + ["verify", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"vdisk verify {path} failed: {p.stdout.strip()} {p.stderr.strip()}")


# A child process that verifies with the vdisk of a given checkout (argv[1],
# "" for the installed one): once to warm up, then argv[3] times, printing
# [wall, CPU] of each as JSON.
_CHILD = r"""
import importlib.machinery, importlib.util, json, os, sys, time, tomllib
root, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if root:
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    where = {name: os.path.join(root, d) for name, d in dirs.items()}

    class Checkout:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in where:
                return importlib.util.spec_from_file_location(
                    name, os.path.join(where[name], "__init__.py"), submodule_search_locations=[where[name]])
            return None
    sys.meta_path.insert(0, Checkout)
from vdisk.snapshots.verify import verify
assert not root or verify.__code__.co_filename.startswith(root), verify.__code__.co_filename
out = []
for i in range(runs + 1):
    c, t = time.process_time(), time.perf_counter()
    r = verify(path)
    out.append((time.perf_counter() - t, time.process_time() - c))
    if not r.ok:
        raise SystemExit("verify found problems: " + "; ".join(str(p) for p in r.problems[:5]))
print(json.dumps(out[1:]))
"""


def verify_child(root: str, path: str, runs: int) -> list[tuple[float, float]]:
    """(wall, CPU) of ``runs`` verifies of ``path`` by the checkout at ``root`` ("" for this one)."""
    import json
    p = subprocess.run([sys.executable, "-c", _CHILD, root, path, str(runs)], capture_output=True, text=True,
                       cwd="/")
    if p.returncode != 0:
        raise RuntimeError(f"verify in a child ({root or 'this tree'}) failed: {p.stderr.strip()[-2000:]}")
    return [tuple(x) for x in json.loads(p.stdout)]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def medians(samples) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


# ------------------------------------------------------------------ vdisk

def build_vdisk(path, size, chunks, rewrites, pool, on_snapshots):
    """Write the plan; call ``on_snapshots(n)`` (disk closed) after the first snapshot's rewrites."""
    t = time.perf_counter()
    d = Disk.create(path, size, BS)
    for i, (off, n) in enumerate(chunks):
        d.write(off, pool[i % 997 * BS:i % 997 * BS + n])
    d.flush()
    print(f"  vdisk fill: {len(chunks)} chunks in {time.perf_counter() - t:.1f} s", flush=True)
    for s, runs in enumerate(rewrites):
        d.create_snapshot(f"s{s}")
        for j, (off, n) in enumerate(runs):
            d.write(off, pool[(s * 4 + j) % 997 * BS:(s * 4 + j) % 997 * BS + n])
        if s == 0:
            d.close()
            on_snapshots(1)
            d = Disk.open(path)
    d.close()


def lba_extents(path) -> int:
    with Disk.open(path, readonly=True) as d:
        return len(d.forest.tree("lba"))


# ------------------------------------------------------------------ qcow2

def qemu_io(img, commands):
    p = subprocess.run(["qemu-io", "-f", "qcow2", "-t", "unsafe", img], input="\n".join(commands) + "\n",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"qemu-io failed: {p.stderr.strip()}")


def qemu_check(img):
    p = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"qemu-img check found problems: {p.stdout.strip()} {p.stderr.strip()}")


def build_qcow2(img, size, chunks, rewrites, on_snapshots):
    t = time.perf_counter()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(size)], check=True)
    qemu_io(img, [f"write -P {0x20 + i % 200} {off} {n}" for i, (off, n) in enumerate(chunks)])
    print(f"  qcow2 fill: {len(chunks)} chunks in {time.perf_counter() - t:.1f} s", flush=True)
    for s, runs in enumerate(rewrites):
        subprocess.run(["qemu-img", "snapshot", "-c", f"s{s}", img], check=True)
        qemu_io(img, [f"write -P {0x30 + (s * 4 + j) % 200} {off} {n}" for j, (off, n) in enumerate(runs)])
        if s == 0 or s == len(rewrites) - 1:
            on_snapshots(s + 1)


# ------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 MiB disk instead of 4 GiB")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per row (median)")
    ap.add_argument("--snapshots", type=int, default=32)
    ap.add_argument("--dir", default=None, help="scratch directory (default: the system temp dir)")
    ap.add_argument("--data", action="store_true", help="also time verify --data at the last snapshot")
    ap.add_argument("--no-qemu", action="store_true", help="skip the qcow2 peer")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--against", metavar="CHECKOUT", help="also time the verify of another checkout of vdisk "
                    "(its root directory), alternated with this tree's in child processes")
    ap.add_argument("--child-runs", type=int, default=3, help="timed verifies per child process (--against)")
    args = ap.parse_args(argv)
    against = os.path.abspath(args.against) if args.against else None
    if against and not os.path.isfile(os.path.join(against, "pyproject.toml")):
        ap.error(f"--against {args.against}: no pyproject.toml there, not a vdisk checkout")
    size = 512 * MIB if args.quick else 4 * GIB
    chunks, rewrites = plan(size, args.snapshots, args.seed)
    pool = random.Random(args.seed).randbytes(1061 * BS)      # slices of it are the data written
    qemu = not args.no_qemu and shutil.which("qemu-img") and shutil.which("qemu-io")
    tmp = tempfile.mkdtemp(prefix="vdisk-verify-bench-", dir=args.dir)
    print(f"verify benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}; {code_version()}")
    print(f"disk {size // MIB} MiB, {len(chunks)} chunks, {args.snapshots} snapshots, 4 runs of "
          f"{rewrites[0][0][1] // KIB} KiB rewritten after each, {args.runs} runs per row, scratch {tmp}",
          flush=True)
    rows = {}
    extents = {}
    n = args.snapshots
    try:
        path = os.path.join(tmp, "disk")

        one = os.path.join(tmp, "disk-1")

        def keep_vdisk(n):
            # Metadata verify reads only meta/: keep a copy of the 1-snapshot
            # state, to time both states in turns (the machine's load drifts).
            if n == 1:
                os.mkdir(one)
                shutil.copytree(os.path.join(path, "meta"), os.path.join(one, "meta"))
                for name in ("data", "lock"):
                    open(os.path.join(one, name), "wb").close()
                # Sparse, but as long as the data file the metadata maps:
                # verify checks the data file's size without reading it.
                os.truncate(os.path.join(one, "data"), os.path.getsize(os.path.join(path, "data")))
                extents[1] = lba_extents(path)

        build_vdisk(path, size, chunks, rewrites, pool, keep_vdisk)
        extents[n] = lba_extents(path)
        img = os.path.join(tmp, "disk.qcow2")
        if qemu:
            def measure_qemu(k):
                # Only the first snapshot's state is timed while building; the
                # last one's in the turns below, beside vdisk's.
                if k == 1:
                    w, c = medians([timed(lambda: qemu_check(img)) for _ in range(args.runs)])
                    rows[("qemu", k)] = (w, c, None)
                    print(f"  qemu-img check, {k} internal snapshot(s): {w:.3f} s wall, {c:.3f} s CPU", flush=True)

            build_qcow2(img, size, chunks, rewrites, measure_qemu)
        samples = {1: [], n: []}
        command = []
        checks = []
        children = {"this": [], "against": []}
        # Every row of the last state in the same turns: the machine's load
        # drifts, and the target is a ratio of two of them.
        for turn in range(args.runs):
            for k, where in ((1, one), (n, path)):
                w, c, r = timed(lambda: verify(where))
                if not r.ok:
                    raise RuntimeError("verify found problems: " + "; ".join(str(p) for p in r.problems[:5]))
                samples[k].append((w, c, r))
            if qemu:
                checks.append(timed(lambda: qemu_check(img)))
            command.append(timed(lambda: verify_command(path)))
            if against:
                # Which tree goes first alternates from turn to turn.
                for which in (("this", "against") if turn % 2 == 0 else ("against", "this")):
                    children[which] += verify_child("" if which == "this" else against, path, args.child_runs)
        if qemu:
            rows[("qemu", n)] = medians(checks) + (None,)
            print(f"  qemu-img check, {n} internal snapshot(s): {rows[('qemu', n)][0]:.3f} s wall, "
                  f"{rows[('qemu', n)][1]:.3f} s CPU", flush=True)
        if against:
            for which in ("this", "against"):
                rows[("child", which)] = medians(children[which]) + (None,)
            (tw, tc, _), (aw, ac, _) = rows[("child", "this")], rows[("child", "against")]
            print(f"  in child processes, {n} snapshots, alternated: this tree {tw:.3f} s wall, {tc:.3f} s CPU; "
                  f"{against} {aw:.3f} s wall, {ac:.3f} s CPU (medians of {len(children['this'])} each)",
                  flush=True)
        rows[("vdisk-command", n)] = medians(command) + (None,)
        print(f"  vdisk verify as a command, {n} snapshots: {rows[('vdisk-command', n)][0]:.3f} s wall, "
              f"{rows[('vdisk-command', n)][1]:.3f} s CPU", flush=True)
        for k in (1, n):
            w, c = medians(samples[k])
            r = samples[k][0][2]
            rows[("vdisk", k)] = (w, c, r)
            print(f"  vdisk verify, {k} snapshot(s): {w:.3f} s wall, {c:.3f} s CPU ({r.nodes_checked} nodes "
                  f"checked, {r.nodes_shared} shared accepted, {r.extents} extents read; running point map "
                  f"{extents[k]} extents)", flush=True)
        if args.data:
            w, c, r = timed(lambda: verify(path, data=True))
            rows[("vdisk-data", n)] = (w, c, r)
            print(f"  vdisk verify --data, {n} snapshots: {w:.2f} s ({r.data_blocks} blocks)", flush=True)
        disk_bytes = sum(e.stat().st_blocks for e in os.scandir(path) if e.is_file()) * 512
        shutil.rmtree(path)
        shutil.rmtree(one)
        if qemu:
            os.unlink(img)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    v1, c1, r1 = rows[("vdisk", 1)]
    vn, cn, rn = rows[("vdisk", n)]
    print()
    print(f"running point map: {extents[1]} extents at 1 snapshot, {extents[n]} at {n}; "
          f"vdisk files {disk_bytes / GIB:.2f} GiB")
    print(f"| row | 1 snapshot | {n} snapshots | ratio {n}/1 | target |")
    print("|---|---|---|---|---|")
    print(f"| vdisk verify, wall | {v1:.3f} s | {vn:.3f} s | {vn / v1:.2f} | <= 2.00: "
          f"{verdict(vn <= 2 * v1)} |")
    print(f"| vdisk verify, CPU | {c1:.3f} s | {cn:.3f} s | {cn / c1:.2f} | <= 2.00: "
          f"{verdict(cn <= 2 * c1)} |")
    print(f"| nodes read (shared accepted) | {r1.nodes_checked} ({r1.nodes_shared}) | "
          f"{rn.nodes_checked} ({rn.nodes_shared}) | {rn.nodes_checked / r1.nodes_checked:.2f} | - |")
    if ("qemu", 1) in rows:
        q1, qc1, _ = rows[("qemu", 1)]
        qn, qcn, _ = rows[("qemu", n)]
        print(f"| qemu-img check (qcow2, internal snapshots), wall | {q1:.3f} s | {qn:.3f} s | {qn / q1:.2f} | - |")
        print(f"| qemu-img check, CPU | {qc1:.3f} s | {qcn:.3f} s | {qcn / max(qc1, 1e-9):.2f} | - |")
        print(f"| vdisk / qemu-img, wall | {v1 / q1:.1f} | {vn / qn:.1f} | | <= {VS_QEMU:g} at {n}: "
              f"{verdict(vn <= VS_QEMU * qn)} |")
        print(f"| vdisk / qemu-img, CPU | {c1 / max(qc1, 1e-9):.1f} | {cn / max(qcn, 1e-9):.1f} | | - |")
        wc, cc, _ = rows[("vdisk-command", n)]
        print(f"| `vdisk verify` command (new process) / qemu-img, wall | | {wc / qn:.1f} ({wc:.3f} s) | | - |")
    if ("child", "this") in rows:
        (tw, tc, _), (aw, ac, _) = rows[("child", "this")], rows[("child", "against")]
        print(f"| vdisk verify, {against} (child processes), wall | | {aw:.3f} s | | - |")
        print(f"| vdisk verify, this tree (child processes), wall | | {tw:.3f} s | | - |")
        print(f"| this tree / {os.path.basename(against)}, wall (CPU) | | {tw / aw:.2f} ({tc / ac:.2f}) | | - |")
        if ("qemu", n) in rows:
            qn = rows[("qemu", n)][0]
            print(f"| vdisk / qemu-img, wall: this tree, {os.path.basename(against)} (child processes) | | "
                  f"{tw / qn:.1f}, {aw / qn:.1f} | | - |")
    if ("vdisk-data", n) in rows:
        td, _c, rd = rows[("vdisk-data", n)]
        print(f"| vdisk verify --data | | {td:.2f} s ({rd.data_blocks * BS / MIB / td:.0f} MiB/s) | | - |")
    if ("qemu", 1) in rows:
        print()
        print(f"- vdisk verify (metadata, in process) of {size / GIB:g} GiB with {n} snapshots vs "
              f"qemu-img check of the same data in qcow2: {vn / qn:.1f}x ({vn:.3f} s vs {qn:.3f} s; "
              f"target <= {VS_QEMU:g}x): {verdict(vn <= VS_QEMU * qn)}")
        print(f"- the same as the command `vdisk verify DISK` (Python start-up included): {wc / qn:.1f}x "
              f"({wc:.3f} s; target <= {VS_QEMU:g}x): {verdict(wc <= VS_QEMU * qn)}")
        print(f"- vdisk verify with {n} snapshots vs 1: {vn / v1:.2f}x wall (target <= 2x, issue 4): "
              f"{verdict(vn <= 2 * v1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
