"""FUSE benchmark: fio on a mounted disk.img beside the same jobs over NBD.

    .venv/bin/python bench/fuse_bench.py [--quick] [--runs 3] [--runtime 5] [--size 256M]

Two fresh disks of ``--size`` in a temp directory, in the same run:

* ``FUSE`` - ``vdisk mount``, fio ``ioengine=psync`` with ``direct=1`` on
  ``MOUNTPOINT/disk.img`` (O_DIRECT: every request reaches vdisk instead of
  the page cache, as NBD's do);
* ``NBD``  - ``vdisk serve`` on a unix socket, fio ``ioengine=nbd``, queue
  depth 1 (psync is synchronous, so both have one request in flight).

Both regions are written once with 1 MiB writes before any timed row, so
reads hit data, not holes. Rows alternate FUSE and NBD; each runs
``--runtime`` seconds, and the table shows the median of ``--runs`` runs and
FUSE / NBD (> 1 means FUSE is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import socket_answers  # noqa: E402  (bench/ is the script's directory)

VDISK = [sys.executable, "-m", "vdisk.cli.main"]

ROWS = [  # name, fio rw, block size, unit
    ("4 KiB rand read", "randread", "4k", "IOPS"),
    ("4 KiB rand write", "randwrite", "4k", "IOPS"),
    ("1 MiB seq read", "read", "1M", "MB/s"),
    ("1 MiB seq write", "write", "1M", "MB/s"),
]


def _vdisk(*args):
    subprocess.run(VDISK + list(args), check=True, stdout=subprocess.DEVNULL)


def fio(target: dict, rw: str, bs: str, size: int, runtime: float | None) -> dict:
    argv = ["fio", "--name=bench", f"--rw={rw}", f"--bs={bs}", f"--size={size}", "--iodepth=1",
            "--output-format=json", "--randrepeat=0"]
    if target["kind"] == "fuse":
        argv += ["--ioengine=psync", "--direct=1", f"--filename={target['file']}"]
    else:
        argv += ["--ioengine=nbd", f"--uri={target['uri']}"]
    if runtime:
        argv += ["--time_based", f"--runtime={runtime}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=(runtime or 60) * 10 + 600)
    if r.returncode:
        raise RuntimeError(f"fio failed: {r.stderr[-2000:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return {"IOPS": side["iops"], "MB/s": side["bw_bytes"] / 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=5.0, help="seconds per row")
    ap.add_argument("--size", default="256M", help="disk size and fio region")
    ap.add_argument("--quick", action="store_true", help="1 run of 2 s on 64M")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.runtime, args.size = 1, 2.0, "64M"
    from vdisk.units import parse_size
    size = parse_size(args.size)
    for tool in ("fio", "nbdkit", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"fuse_bench: {tool} is not installed (./dev setup installs it)")

    tmp = tempfile.mkdtemp(prefix="vdisk-fuse-bench-")
    mp = os.path.join(tmp, "mnt")
    os.mkdir(mp)
    fuse_disk = os.path.join(tmp, "fuse.vdisk")
    nbd_disk = os.path.join(tmp, "nbd.vdisk")
    sock = os.path.join(tmp, "nbd.sock")
    serve = None
    mounted = False
    try:
        _vdisk("create", fuse_disk, "--size", str(size))
        _vdisk("create", nbd_disk, "--size", str(size))
        _vdisk("mount", fuse_disk, mp)
        mounted = True
        serve = subprocess.Popen(VDISK + ["serve", nbd_disk, "--socket", sock],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not socket_answers(sock):
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vdisk serve did not start: {serve.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        targets = {"FUSE": {"kind": "fuse", "file": os.path.join(mp, "disk.img")},
                   "NBD": {"kind": "nbd", "uri": f"nbd+unix:///?socket={sock}"}}
        for t in targets.values():
            fio(t, "write", "1M", size, None)       # fill the region once
        results = {(row[0], peer): [] for row in ROWS for peer in targets}
        for _ in range(args.runs):
            for name, rw, bs, unit in ROWS:
                for peer, t in targets.items():
                    results[(name, peer)].append(fio(t, rw, bs, size, args.runtime)[unit])
    finally:
        if mounted:
            subprocess.run(VDISK + ["umount", mp], stdout=subprocess.DEVNULL)
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                serve.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"fio, one job, queue depth 1, {args.runs} run(s) of {args.runtime:g} s on {args.size}; "
          f"median; FUSE: psync direct=1 on disk.img, NBD: ioengine=nbd")
    print(f"| {'row':<18} | {'unit':<5} | {'FUSE':>8} | {'NBD':>8} | FUSE/NBD |")
    print(f"|{'-' * 20}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, _rw, _bs, unit in ROWS:
        f = statistics.median(results[(name, "FUSE")])
        n = statistics.median(results[(name, "NBD")])
        print(f"| {name:<18} | {unit:<5} | {f:>8.0f} | {n:>8.0f} | {f / n:>8.2f} |")


if __name__ == "__main__":
    main()
