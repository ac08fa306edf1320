"""NBD benchmark: fio (ioengine=nbd, unix socket) against vdisk serve and its peers.

    .venv/bin/python bench/nbd_bench.py [--quick] [--runs 3] [--runtime 5] [--size 2G]

Peers, all in the same run and interleaved, each on a fresh image in a temp
directory (page cache warm, as a VM's host would be):

* ``vdisk``    - ``vdisk serve`` on a vdisk disk;
* ``qcow2``    - ``qemu-nbd`` serving a qcow2 image (writeback cache);
* ``file``     - nbdkit's C file plugin on a raw file (the ceiling);
* ``pypass``   - a trivial nbdkit Python plugin forwarding to a raw file
  (``bench/passthrough_plugin.py``: nbdkit's embedded Python, nothing else).

Rows: 4 KiB random read and write at queue depth 1 and 16, 1 MiB sequential
read and write (qd 4); then "after snapshot" rows - 4 KiB random writes
right after a snapshot of the fully written region (vdisk: ``vdisk snapshot
create`` while serving; qcow2: an internal snapshot, which qemu-nbd cannot
take live, so the server is restarted around ``qemu-img snapshot``), and
vdisk 4 KiB qd16 writes over a longer run (>= 15 s) with and without 10
snapshots taken during it over the control socket.

The region is written once with 1 MiB writes before any timed row, so reads
hit data, not holes, and each peer's files are read into the page cache
before its read rows (see ``_warm``). Each row runs ``--runtime`` seconds; the table shows
the median of ``--runs`` runs and each peer's ratio to vdisk's figure
(vdisk / peer; > 1 means vdisk is faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from vdisk.nbdplugin import nbdkit_env
from vdisk.units import parse_size

from benchlib import machine  # noqa: E402  (bench/ is the script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
PASSTHROUGH = os.path.join(HERE, "passthrough_plugin.py")
VDISK = [sys.executable, "-m", "vdisk.cli.main"]
MIB = 1 << 20

ROWS = [  # name, fio rw, block size, iodepth, unit
    ("1 MiB seq write", "write", "1M", 4, "MB/s"),
    ("1 MiB seq read", "read", "1M", 4, "MB/s"),
    ("4 KiB rand read qd1", "randread", "4k", 1, "IOPS"),
    ("4 KiB rand read qd16", "randread", "4k", 16, "IOPS"),
    ("4 KiB rand write qd1", "randwrite", "4k", 1, "IOPS"),
    ("4 KiB rand write qd16", "randwrite", "4k", 16, "IOPS"),
]
SNAP_ROWS = [("4 KiB rand write qd1 after snapshot", "randwrite", "4k", 1, "IOPS"),
             ("4 KiB rand write qd16 after snapshot", "randwrite", "4k", 16, "IOPS")]
LONG_WRITE = "4 KiB rand write qd16, long run"
TEN_SNAPS = "4 KiB rand write qd16, long run, 10 snapshots during"
PEERS = ("vdisk", "qcow2", "file", "pypass")




def _answers(sock: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(sock)
        return True
    except OSError:
        return False


class Server:
    """One peer's NBD server on a unix socket in ``tmp``."""

    def __init__(self, peer: str, tmp: str, size: int):
        self.peer, self.tmp, self.size = peer, tmp, size
        self.sock = os.path.join(tmp, f"{peer}.sock")
        self.proc = None
        self.snaps = 0
        if peer == "vdisk":
            self.image = os.path.join(tmp, "bench.vdisk")
            subprocess.run(VDISK + ["create", self.image, "--size", str(size)], check=True,
                           stdout=subprocess.DEVNULL)
        elif peer == "qcow2":
            self.image = os.path.join(tmp, "bench.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.image, str(size)], check=True)
        else:
            self.image = os.path.join(tmp, f"{peer}.raw")
            with open(self.image, "wb") as f:
                f.truncate(size)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def start(self):
        if self.peer == "vdisk":
            argv, env = VDISK + ["serve", self.image, "--socket", self.sock], None
        elif self.peer == "qcow2":
            argv, env = ["qemu-nbd", "-k", self.sock, "-f", "qcow2", "-t", "--cache=writeback",
                         "--discard=unmap", self.image], None
        elif self.peer == "file":
            argv, env = ["nbdkit", "-f", "-U", self.sock, "file", self.image], nbdkit_env()
        else:
            argv, env = ["nbdkit", "-f", "-U", self.sock, "python", PASSTHROUGH, f"file={self.image}"], nbdkit_env()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not _answers(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.peer} server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if os.path.exists(self.sock):
            os.unlink(self.sock)   # nbdkit and qemu-nbd may leave it

    def snapshot(self):
        """A snapshot of everything written so far (see the module doc for qcow2)."""
        self.snaps += 1
        name = f"bench{self.snaps}"
        if self.peer == "vdisk":
            subprocess.run(VDISK + ["snapshot", "create", self.image, name], check=True,
                           stdout=subprocess.DEVNULL)
        elif self.peer == "qcow2":
            self.stop()
            subprocess.run(["qemu-img", "snapshot", "-c", name, self.image], check=True)
            self.start()
        else:
            raise ValueError(f"{self.peer} has no snapshots")


def fio(uri: str, rw: str, bs: str, depth: int, size: int, runtime: float, time_based=True) -> dict:
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
            f"--iodepth={depth}", f"--size={size}", "--output-format=json", "--randrepeat=0"]
    if time_based:
        argv += ["--time_based", f"--runtime={runtime}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime * 10 + 600)
    if r.returncode:
        raise RuntimeError(f"fio failed: {r.stderr[-2000:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return {"IOPS": side["iops"], "MB/s": side["bw_bytes"] / 1e6}


def run_peer(peer: str, tmp: str, size: int, runtime: float) -> dict:
    out = {}
    srv = Server(peer, tmp, size)
    srv.start()
    try:
        fio(srv.uri, "write", "1M", 4, size, runtime, time_based=False)      # fill the region once
        for name, rw, bs, depth, unit in ROWS:
            if "read" in rw:
                _warm(srv.image)
            out[name] = fio(srv.uri, rw, bs, depth, size, runtime)[unit]
        if peer in ("vdisk", "qcow2"):
            for name, rw, bs, depth, unit in SNAP_ROWS:
                srv.snapshot()
                out[name] = fio(srv.uri, rw, bs, depth, size, runtime)[unit]
        if peer == "vdisk":
            long = max(15.0, 3 * runtime)
            out[LONG_WRITE] = fio(srv.uri, "randwrite", "4k", 16, size, long)["IOPS"]
            out[TEN_SNAPS] = _write_with_snapshots(srv, size, long)
    finally:
        srv.stop()
    return out


def _warm(path: str):
    """Read a peer's backing files into the page cache before a read row.

    This machine type reclaims cold page cache within minutes (DAMON), so a
    peer whose file was written longest ago would read from the virtual disk
    (~50 us per 4 KiB) while another reads from memory (~2 us).
    """
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for name in filter(os.path.isfile, files):   # not the sockets in a vdisk directory
        with open(name, "rb") as f:
            while f.read(8 * MIB):
                pass


def _write_with_snapshots(srv: Server, size: int, runtime: float) -> float:
    """4 KiB writes while 10 snapshots are taken through the control socket.

    The snapshots go through the same server path as ``vdisk snapshot
    create``, from one control connection of this process: ten CLI
    processes starting inside the window would measure Python start-up on a
    2-core machine, not what a snapshot costs the disk.
    """
    from vdisk.control.client import find_server
    done = threading.Event()
    errors = []

    def snapshots():
        try:
            with find_server(srv.image) as control:
                for i in range(10):
                    if done.wait(runtime / 11):
                        return
                    control.create_snapshot(f"during{i}")
        except Exception as e:   # reported after fio
            errors.append(e)

    t = threading.Thread(target=snapshots)
    t.start()
    try:
        res = fio(srv.uri, "randwrite", "4k", 16, size, runtime)["IOPS"]
    finally:
        done.set()
        t.join()
    if errors:
        raise errors[0]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run, 2 s per row")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=5.0, help="seconds per row")
    # qcow2 copies a 64 KiB cluster on the first write after a snapshot; in a
    # 256 MiB region (4096 clusters) that is over within a second at qd16,
    # hiding the collapse the "after snapshot" rows are about.
    ap.add_argument("--size", default="2G", help="region size per image (default 2G)")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--dir", default=None, help="where images go (default: a temp dir)")
    args = ap.parse_args(argv)
    runs, runtime = (1, 2.0) if args.quick else (args.runs, args.runtime)
    size = parse_size(args.size)
    peers = [p for p in args.peers.split(",") if p]
    for tool in ("fio", "nbdkit", "qemu-nbd", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"nbd_bench: {tool} is missing (./dev setup installs it)", file=sys.stderr)
            return 2
    results = {p: [] for p in peers}
    for i in range(runs):
        for p in peers:
            tmp = tempfile.mkdtemp(prefix="vdisk-nbd-bench-", dir=args.dir)
            try:
                print(f"run {i + 1}/{runs}: {p} ...", file=sys.stderr, flush=True)
                results[p].append(run_peer(p, tmp, size, runtime))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    med = {p: {row: statistics.median(r[row] for r in results[p]) for row in results[p][0]} for p in peers}
    print(f"\n## {datetime.date.today()} - NBD, fio ioengine=nbd over a unix socket (bench/nbd_bench.py"
          f"{' --quick' if args.quick else ''})\n")
    print(f"Machine: {machine()}; nbdkit {_version(['nbdkit', '--version'])}, "
          f"{_version(['qemu-nbd', '--version'])}, fio {_version(['fio', '--version'])}.")
    print(f"Region {args.size} per image, {runtime:g} s per row, median of {runs} run(s); "
          f"ratio = vdisk / peer.\n")
    others = [p for p in peers if p != "vdisk"]
    head = "| row | unit | " + " | ".join(peers + [f"vs {p}" for p in others]) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    all_rows = [r[0] for r in ROWS + SNAP_ROWS] + [LONG_WRITE, TEN_SNAPS]
    units = {r[0]: r[4] for r in ROWS + SNAP_ROWS}
    units[LONG_WRITE] = units[TEN_SNAPS] = "IOPS"
    for row in all_rows:
        if not any(row in med[p] for p in peers):
            continue
        cells = [_fmt(med[p].get(row), units[row]) for p in peers]
        v = med.get("vdisk", {}).get(row)
        ratios = [f"{v / med[p][row]:.2f}" if v and med[p].get(row) else "-" for p in others]
        print(f"| {row} | {units[row]} | " + " | ".join(cells + ratios) + " |")
    if "vdisk" in med:
        print()
        for line in _targets(med):
            print(line)
    return 0


def _targets(med: dict) -> list[str]:
    v = med["vdisk"]
    out = []

    def check(label, value, goal):
        out.append(f"- {label}: {value:.2f} (target >= {goal:g}): {'pass' if value >= goal else 'MISS'}")

    if "pypass" in med:
        for row in ("4 KiB rand read qd1", "4 KiB rand read qd16", "4 KiB rand write qd1", "4 KiB rand write qd16"):
            check(f"{row} vs Python passthrough", v[row] / med["pypass"][row], 0.8)    # issue 13
    if "qcow2" in med:
        for row in ("1 MiB seq read", "1 MiB seq write"):
            check(f"{row} vs qemu-nbd+qcow2", v[row] / med["qcow2"][row], 1.0)         # issue 13
        for depth in ("qd1", "qd16"):
            after = f"4 KiB rand write {depth} after snapshot"
            check(f"{after} vs qcow2 after snapshot", v[after] / med["qcow2"][after], 5)
    for depth in ("qd1", "qd16"):
        check(f"4 KiB rand write {depth} after snapshot vs without",
              v[f"4 KiB rand write {depth} after snapshot"] / v[f"4 KiB rand write {depth}"], 0.9)   # issue 13
    check("4 KiB rand write qd16 with 10 snapshots vs without (long runs)", v[TEN_SNAPS] / v[LONG_WRITE], 0.9)
    return out


def _fmt(x, unit) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if unit == "IOPS" else f"{x:,.0f}"


def _version(argv) -> str:
    try:
        line = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"
    return line.replace("fio-", "").replace("nbdkit ", "").strip()


if __name__ == "__main__":
    sys.exit(main())
