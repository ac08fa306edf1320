"""vdisk on RADOS vs Ceph RBD, on the same throwaway cluster, in the same run (issue 16).

    .venv/bin/python bench/rados_bench.py [--quick] [--runs 3] [--runtime 5] [--size 1G]
                                          [--dir DIR] [--json FILE] [--profile DIR]

A one-mon, one-OSD memstore cluster is started in a temp directory with
tools/ceph_cluster.py's code (daemons die with this process; stopped at the
end whatever happened, and only its own daemons), a pool ``bench`` (size 1,
8 PGs) is created, then every run makes a fresh disk of each peer:

* ``vdisk`` - ``vdisk --ceph-conf CONF create rados:bench/vdN``, served by
  ``vdisk serve`` on a unix socket, fio ``ioengine=nbd``;
* ``rbd``   - ``rbd -c CONF create bench/imgN``, fio ``ioengine=rbd``
  (librbd in fio's process, ``clientname=admin``, CEPH_CONF set).

Both are filled with 1 MiB writes (qd 4), then the rows run interleaved
(each row visits both peers, the first one alternating from row to row and
run to run): 4 KiB random read qd 1 and 16, 4 KiB random write qd 1 and 16,
1 MiB sequential read and write qd 4 (``--runtime`` s each). Then:

1. ``snapshot create`` s1: ``vdisk snapshot create`` (through the running
   server's control socket: the CLI goes there while the disk is served) vs
   ``rbd snap create`` (the image is not open elsewhere then);
2. 10% of the 4 KiB blocks rewritten at random: one fio job with a fixed
   ``randseed`` and fio's random map (each block once), ending in a flush;
   then s2 (not timed twice: the create row is s1's);
3. changed-block diff s1 -> s2: ``vdisk diff DISK s1 s2 --json`` vs
   ``rbd diff --from-snap s1 bench/imgN@s2 --format json`` (fast-diff: the
   object map is on by default);
4. delete s1, space included: ``vdisk snapshot delete`` returns when the
   blocks only s1 held are back in the disk's free map; ``rbd snap rm``
   returns when the monitor has the snapshot in the pool's removed set, and
   the OSD trims the clones after that, in the background: the bench polls
   every PG of the pool (``pg query`` through librados, every 20 ms) until
   each has s1's snap id in ``purged_snaps`` with an empty ``snap_trimq``
   and no ``snaptrim`` state (bounded by ``--trim-timeout``). The OSD's
   ``stat_bytes_used`` (perf dump) is printed before and after each delete
   as a cross-check of what came back.

memstore counts as a rotational device, so Ceph's default
``osd_snap_trim_sleep_hdd`` of 5 s between trim batches would apply;
the bench sets it to 0 (what an SSD OSD gets, ``osd_snap_trim_sleep_ssd``):
RBD's trim measured at its fastest, not throttled.

Each I/O row also records CPU per I/O: the vdisk server's (its nbdkit
process, every thread: the plugin's Python, librados, nbdkit) and fio's
own (for RBD that includes librbd, which runs in fio).

``--profile DIR``: py-spy (``--py-spy BIN``, else ``py-spy`` on PATH)
samples the vdisk server's nbdkit process during each of its I/O rows,
idle threads included (a thread waiting for the OSD is where the time
goes), into ``DIR/runN-ROW.txt`` (py-spy's raw format: one collapsed stack
a line with its count), and the report prints, for each row, where the
request threads' samples were and the functions they were inside.
Sampling costs the server some CPU: those runs' figures are for the
profile, not for the table.

Every CLI step is timed end to end as a subprocess (process start,
cluster connect and the work; both CLIs pay the same kind of start-up).
The table shows medians of ``--runs`` runs and the ratio vdisk / RBD as
"how many times better" (for throughput vdisk / RBD, for times RBD / vdisk:
> 1 means vdisk is better). Every loop and wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.join(_ROOT, "tools"))

import ceph_cluster  # noqa: E402
from vdisk.units import parse_size  # noqa: E402

from benchlib import code_version, fio_job, machine, socket_answers  # noqa: E402  (bench/ is the script's directory)

VDISK = [sys.executable, "-m", "vdisk.cli.main"]
POOL = "bench"
PEERS = ("vdisk", "rbd")
MIB = 1 << 20
REWRITE_FRACTION = 0.10
REWRITE_SEED = 16

IO_ROWS = [  # name, rw, bs, iodepth, unit
    ("4K randread qd1", "randread", "4k", 1, "IOPS"),
    ("4K randread qd16", "randread", "4k", 16, "IOPS"),
    ("4K randwrite qd1", "randwrite", "4k", 1, "IOPS"),
    ("4K randwrite qd16", "randwrite", "4k", 16, "IOPS"),
    ("1M seq read qd4", "read", "1M", 4, "MB/s"),
    ("1M seq write qd4", "write", "1M", 4, "MB/s"),
]
FILL = "fill 1M qd4 (s)"
CREATE = "disk create (s)"
SNAP_CREATE = "snapshot create (s)"
REWRITE = "10% rewrite (s)"
DIFF = "diff s1->s2 (s)"
DELETE = "snapshot delete incl. reclaim (s)"
TIME_ROWS = [CREATE, FILL, SNAP_CREATE, REWRITE, DIFF, DELETE]


def run(argv: list[str], timeout: float = 300, env=None) -> tuple[float, str]:
    """Run a command to completion; (seconds, stdout). Fails loudly."""
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    dt = time.monotonic() - t
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])} ... failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    return dt, r.stdout


# ------------------------------------------------------------------ cluster side

class Bench:
    def __init__(self, cluster: ceph_cluster.Cluster, tmp: str, size: int, runtime: float, trim_timeout: float,
                 profile: str | None = None, py_spy: str | None = None):
        self.c, self.tmp, self.size, self.runtime, self.trim_timeout = cluster, tmp, size, runtime, trim_timeout
        self.profile, self.py_spy = profile, py_spy
        self.profiles: list[str] = []
        self.conf = cluster.conf
        self.env = dict(os.environ, CEPH_CONF=self.conf)
        self.r = cluster.client(timeout=30)
        self.vdisk = VDISK + ["--ceph-conf", self.conf]
        self.rbd = ["rbd", "-c", self.conf]
        self.serve = None
        self.sock = os.path.join(tmp, "vdisk.sock")

    def close(self):
        self.stop_serve()
        self.r.shutdown()

    def mon(self, prefix: str, **kw):
        return self.c.mon_command(self.r, prefix, **kw)

    def osd(self, prefix: str, **kw) -> bytes:
        ret, out, err = self.r.osd_command(0, json.dumps({"prefix": prefix, **kw}), b"", timeout=30)
        if ret < 0:
            raise RuntimeError(f"osd {prefix}: {os.strerror(-ret)}: {err}")
        return out

    def make_pool(self):
        self.mon("osd pool create", pool=POOL, pg_num=8, pgp_num=8)
        self.mon("osd pool set", pool=POOL, var="size", val="1", yes_i_really_mean_it=True)
        self.mon("osd pool application enable", pool=POOL, app="rbd")
        want = {"osd_snap_trim_sleep_hdd": "0.000000", "osd_heartbeat_interval": "1"}   # the latter: fresher stat_bytes_used
        for k, v in want.items():
            self.mon("config set", who="osd", name=k, value=v)
        until = time.monotonic() + 30
        while any(json.loads(self.osd("config get", var=k))[k] != v for k, v in want.items()):
            if time.monotonic() > until:
                raise RuntimeError(f"the OSD did not take {want}")
            time.sleep(0.1)
        pools = json.loads(self.mon("osd dump"))["pools"]
        self.pool_id = next(p["pool"] for p in pools if p["pool_name"] == POOL)
        self.pgs = [f"{self.pool_id}.{i:x}" for i in range(8)]

    def used_bytes(self) -> int:
        return int(json.loads(self.osd("perf dump"))["osd"]["stat_bytes_used"])

    def pg_states(self) -> list[dict]:
        out = []
        for pg in self.pgs:
            ret, o, err = self.r.pg_command(pg, json.dumps({"prefix": "query", "pgid": pg}), b"", timeout=30)
            if ret < 0:
                raise RuntimeError(f"pg {pg} query: {os.strerror(-ret)}: {err}")
            out.append(json.loads(o))
        return out

    def wait_trimmed(self, snap_id: int, since: float) -> tuple[float, int]:
        """Seconds from ``since`` until every PG has purged ``snap_id``; polls made."""
        until = time.monotonic() + self.trim_timeout
        polls = 0
        while True:
            polls += 1
            done = True
            for d in self.pg_states():
                purged = any(int(iv["start"], 16) <= snap_id < int(iv["start"], 16) + int(iv["length"], 16)
                             for iv in d["info"].get("purged_snaps", []))
                if not purged or d.get("snap_trimq") not in ("[]", "", None) or "snaptrim" in d["state"]:
                    done = False
                    break
            if done:
                return time.monotonic() - since, polls
            if time.monotonic() > until:
                raise RuntimeError(f"RBD snapshot {snap_id} not trimmed within {self.trim_timeout:.0f} s")
            time.sleep(0.02)

    def settle_used(self) -> int:
        """stat_bytes_used once it has been refreshed (heartbeat 1 s): two samples 1.5 s apart."""
        time.sleep(1.5)
        return self.used_bytes()

    def remove_prefix(self, prefix: str):
        """Delete every object of a vdisk disk (there is no CLI delete yet)."""
        io = self.r.open_ioctx(POOL)
        try:
            names = [o.key for o in io.list_objects() if o.key.startswith(prefix + ".")]
            for n in names:
                io.remove_object(n)
        finally:
            io.close()

    # ------------------------------------------------------------ vdisk server

    def start_serve(self, disk: str):
        self.serve = subprocess.Popen(self.vdisk + ["serve", disk, "--socket", self.sock],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True, env=self.env)
        until = time.monotonic() + 60
        while not socket_answers(self.sock):
            if self.serve.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"vdisk serve did not start: {self.serve.stderr.read().decode()[-1500:]}")
            time.sleep(0.05)

    def stop_serve(self):
        p, self.serve = self.serve, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    # ------------------------------------------------------------ fio

    def fio(self, peer: str, image: str, args: list[str], timeout: float) -> dict:
        if peer == "vdisk":
            eng = ["--ioengine=nbd", f"--uri=nbd+unix:///?socket={self.sock}"]
        else:
            eng = ["--ioengine=rbd", "--clientname=admin", f"--pool={POOL}", f"--rbdname={image}"]
        return fio_job(["fio", "--name=bench", *eng, "--output-format=json", *args], timeout, env=self.env,
                       what=f"fio ({peer})")

    def nbdkit_pid(self) -> int:
        """The serving nbdkit: the child of ``vdisk serve``."""
        pid = self.serve.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
        for k in kids:
            with open(f"/proc/{k}/comm") as f:
                if f.read().strip() == "nbdkit":
                    return k
        raise RuntimeError(f"vdisk serve (PID {pid}) has no nbdkit child")

    def cpu_seconds(self, pid: int) -> float:
        """User + system CPU of a process so far (all its threads)."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fio_row(self, peer, image, rw, bs, depth, label: str = "") -> dict:
        """One timed row: its figures, and the CPU each side spent per I/O."""
        spy = None
        server = self.nbdkit_pid() if peer == "vdisk" else None
        if self.profile and server:
            spy_out = os.path.join(self.profile, label.replace(" ", "-") + ".txt")
            spy = subprocess.Popen([self.py_spy, "record", "--pid", str(server), "--idle",
                                    "--nonblocking", "--rate", "200", "--format", "raw", "--output", spy_out],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)                  # attached before the row starts
        cpu0 = self.cpu_seconds(server) if server else 0.0
        try:
            job = self.fio(peer, image, [f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}", f"--size={self.size}",
                                         "--randrepeat=0", "--time_based", f"--runtime={self.runtime}"],
                           timeout=self.runtime * 10 + 300)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(timeout=30)
                if os.path.exists(spy_out):
                    self.profiles.append(spy_out)
                else:
                    print(f"  py-spy wrote nothing: {spy.stderr.read().decode()[-500:]}", file=sys.stderr)
        side = job["write"] if "write" in rw else job["read"]
        ios = max(1, side["total_ios"])
        secs = job.get("job_runtime", 0) / 1000 or self.runtime
        out = {"IOPS": side["iops"], "MB/s": side["bw_bytes"] / 1e6,
               # fio's own CPU (for RBD: librbd's too), per I/O
               "fio_cpu_us": (job["usr_cpu"] + job["sys_cpu"]) / 100 * secs / ios * 1e6}
        if server:
            out["server_cpu_us"] = (self.cpu_seconds(server) - cpu0) / ios * 1e6
        return out

    # ------------------------------------------------------------ one run

    def one_run(self, i: int) -> dict:
        vd, img = f"vd{i}", f"img{i}"
        disk = f"rados:{POOL}/{vd}"
        out = {p: {} for p in PEERS}
        extra = {p: {} for p in PEERS}
        images = {"vdisk": vd, "rbd": img}
        turn = [i % 2]

        def order():
            turn[0] ^= 1
            return PEERS if turn[0] else PEERS[::-1]

        def step(peer, what):
            print(f"  run {i + 1}: {peer}: {what} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

        try:
            for p in order():
                step(p, "create")
                if p == "vdisk":
                    out[p][CREATE], _ = run(self.vdisk + ["create", disk, "--size", str(self.size)])
                    self.start_serve(disk)
                else:
                    out[p][CREATE], _ = run(self.rbd + ["create", f"{POOL}/{img}", "--size", f"{self.size // MIB}M"])
            for p in order():
                step(p, "fill")
                t = time.monotonic()
                self.fio(p, images[p], ["--rw=write", "--bs=1M", "--iodepth=4", f"--size={self.size}",
                                        "--end_fsync=1"], timeout=1800)
                out[p][FILL] = time.monotonic() - t
            for name, rw, bs, depth, unit in IO_ROWS:
                for p in order():
                    step(p, name)
                    row = self.fio_row(p, images[p], rw, bs, depth, f"run{i + 1} {name}")
                    out[p][name] = row[unit]
                    extra[p][f"{name} CPU us/IO"] = {k[:-3]: round(v, 1) for k, v in row.items() if k.endswith("_us")}
            for p in order():
                step(p, "snapshot create")
                if p == "vdisk":
                    out[p][SNAP_CREATE], _ = run(self.vdisk + ["snapshot", "create", disk, "s1"])
                else:
                    out[p][SNAP_CREATE], _ = run(self.rbd + ["snap", "create", f"{POOL}/{img}@s1"])
            n = int(self.size // 4096 * REWRITE_FRACTION)
            for p in order():
                step(p, "10% rewrite")
                t = time.monotonic()
                job = self.fio(p, images[p], ["--rw=randwrite", "--bs=4k", "--iodepth=16", f"--size={self.size}",
                                              f"--number_ios={n}", f"--randseed={REWRITE_SEED}", "--norandommap=0",
                                              "--end_fsync=1"], timeout=1800)
                out[p][REWRITE] = time.monotonic() - t
                extra[p]["rewritten_ios"] = job["write"]["total_ios"]
                if p == "vdisk":
                    run(self.vdisk + ["snapshot", "create", disk, "s2"])
                else:
                    run(self.rbd + ["snap", "create", f"{POOL}/{img}@s2"])
            for p in order():
                step(p, "diff")
                if p == "vdisk":
                    out[p][DIFF], text = run(self.vdisk + ["diff", disk, "s1", "s2", "--json"])
                    d = json.loads(text)
                    extra[p]["diff_ranges"] = len(d["changes"])
                    extra[p]["diff_bytes"] = d["data_bytes"] + d["zero_bytes"]
                    extra[p]["diff_nodes_read"] = d.get("nodes_read")
                else:
                    out[p][DIFF], text = run(self.rbd + ["diff", "--from-snap", "s1", f"{POOL}/{img}@s2",
                                                         "--format", "json"])
                    ranges = json.loads(text)
                    extra[p]["diff_ranges"] = len(ranges)
                    extra[p]["diff_bytes"] = sum(int(r["length"]) for r in ranges)
            for p in order():
                step(p, "snapshot delete")
                before = self.settle_used()
                if p == "vdisk":
                    out[p][DELETE], text = run(self.vdisk + ["snapshot", "delete", "-q", disk, "s1", "--json"])
                    extra[p]["delete_json"] = text.strip()[-300:]
                else:
                    snaps = json.loads(run(self.rbd + ["snap", "ls", f"{POOL}/{img}", "--format", "json"])[1])
                    snap_id = next(int(s["id"]) for s in snaps if s["name"] == "s1")
                    t = time.monotonic()
                    rm, _ = run(self.rbd + ["snap", "rm", "--no-progress", f"{POOL}/{img}@s1"])
                    out[p][DELETE], polls = self.wait_trimmed(snap_id, t)
                    extra[p]["snap_rm_cli_s"] = rm
                    extra[p]["trim_after_rm_s"] = out[p][DELETE] - rm
                    extra[p]["trim_polls"] = polls
                after = self.settle_used()
                extra[p]["osd_used_before"] = before
                extra[p]["osd_used_after"] = after
        finally:
            self.stop_serve()
            for p in PEERS:
                try:
                    if p == "vdisk":
                        self.remove_prefix(vd)
                    else:
                        subprocess.run(self.rbd + ["snap", "purge", "--no-progress", f"{POOL}/{img}"],
                                       capture_output=True, timeout=300)
                        subprocess.run(self.rbd + ["rm", "--no-progress", f"{POOL}/{img}"],
                                       capture_output=True, timeout=300)
                except Exception as e:     # the next run uses new names; the cluster goes anyway
                    print(f"  cleanup of {p} failed: {e}", file=sys.stderr)
        return {"rows": out, "extra": extra}


# ------------------------------------------------------------------ report

def profile_summary(path: str, top: int = 8) -> list[str]:
    """What a py-spy raw profile of the server says about its requests.

    Only the samples of threads serving a request (a stack through the
    plugin) or finishing a RADOS read count: the control thread's idle
    accept and nbdkit's threads outside Python are left out. Shares are of
    those samples (an idle thread waiting for the OSD counts: that is where
    a request's time goes): the frames where they were (leaves), then the
    functions they were inside (inclusive).
    """
    total, req, leaf, incl = 0, 0, {}, {}
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            total += n
            if "plugin.py" not in stack and "datastore_rados.py" not in stack:
                continue
            req += n
            frames = stack.split(";")
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
            for frame in set(f.split(" (")[0] for f in frames):
                incl[frame] = incl.get(frame, 0) + n
    if not req:
        return [f"{os.path.basename(path)}: no request samples ({total} in all)"]
    out = [f"{os.path.basename(path)}: {req} request samples of {total}"]
    out += [f"  {100 * n / req:5.1f}% at   {fr}" for fr, n in sorted(leaf.items(), key=lambda kv: -kv[1])[:top]]
    out += [f"  {100 * n / req:5.1f}% in   {fr}" for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]
            if not fr.startswith(("_request", "pread", "pwrite"))]
    return out


def better(row: str, v: float, r: float) -> float:
    """> 1: vdisk is better (throughput: vdisk / rbd; times: rbd / vdisk)."""
    if row in TIME_ROWS:
        return r / v if v else float("inf")
    return v / r if r else float("inf")


def _fmt(row: str, x: float) -> str:
    if row in TIME_ROWS:
        return f"{x:.3f}" if x < 10 else f"{x:.1f}"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def report(med: dict) -> tuple[list[str], list[str]]:
    names = [r[0] + (" (IOPS)" if r[4] == "IOPS" else " (MB/s)") for r in IO_ROWS]
    table = ["| row | vdisk | RBD | vdisk better by (x) |", "|---|---:|---:|---:|"]
    for (row, *_), label in zip(IO_ROWS, names):
        v, r = med["vdisk"][row], med["rbd"][row]
        table.append(f"| {label} | {_fmt(row, v)} | {_fmt(row, r)} | {better(row, v, r):.2f} |")
    for row in TIME_ROWS:
        v, r = med["vdisk"][row], med["rbd"][row]
        table.append(f"| {row} | {_fmt(row, v)} | {_fmt(row, r)} | {better(row, v, r):.2f} |")
    lines = []

    def target(label, row, goal):
        x = better(row, med["vdisk"][row], med["rbd"][row])
        lines.append(f"- {label}: {x:.2f}x (goal {goal}) - {'met' if x >= (0.5 if goal == '>= 0.5x' else 1.0) else 'MISSED'}")

    for row, *_ in IO_ROWS[:4]:
        target(f"{row} >= 0.5x RBD", row, ">= 0.5x")
    target("snapshot delete incl. reclaim faster than RBD's", DELETE, "> 1x")
    target("snapshot create no slower", SNAP_CREATE, ">= 1x")
    target("diff no slower", DIFF, ">= 1x")
    return table, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run, 2 s per row, 256 MiB disks (a smoke run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", type=float, default=5.0, help="seconds per timed row")
    ap.add_argument("--size", default=None, help="disk size per peer (default 1G; --quick 256M)")
    ap.add_argument("--trim-timeout", type=float, default=300.0, help="longest wait for RBD's snap trim (s)")
    ap.add_argument("--dir", default=None, help="where the cluster's temp dir goes")
    ap.add_argument("--json", default=None, help="also write every run's figures to this file")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="py-spy the vdisk server during its I/O rows, into DIR")
    ap.add_argument("--py-spy", default=None, metavar="BIN", help="the py-spy to use (default: on PATH)")
    args = ap.parse_args(argv)
    py_spy = None
    if args.profile:
        py_spy = args.py_spy or shutil.which("py-spy")
        if py_spy is None:
            print("rados_bench: --profile needs py-spy (--py-spy BIN)", file=sys.stderr)
            return 2
        os.makedirs(args.profile, exist_ok=True)
    runs, runtime = (1, 2.0) if args.quick else (args.runs, args.runtime)
    size = parse_size(args.size or ("256M" if args.quick else "1G"))
    for tool in ("fio", "rbd", "ceph-mon", "ceph-osd", "nbdkit"):
        if shutil.which(tool) is None:
            print(f"rados_bench: {tool} is missing (./dev setup installs it)", file=sys.stderr)
            return 2
    started = datetime.datetime.now()
    load0 = os.getloadavg()
    code0 = code_version()
    tmp = tempfile.mkdtemp(prefix="vdisk-rados-bench-", dir=args.dir)
    # rados disks keep their sockets in a local state directory: ours, not /run.
    os.environ["XDG_RUNTIME_DIR"] = os.path.join(tmp, "run")
    os.makedirs(os.environ["XDG_RUNTIME_DIR"], mode=0o700)
    # Two 1 GiB disks and their snapshots live in the OSD's memory at once.
    cluster = ceph_cluster.Cluster(os.path.join(tmp, "ceph"), store_bytes=max(4 << 30, 4 * size + (1 << 30)),
                                   die_with_parent=True)
    results = []
    bench = None
    failed = None
    try:
        t = time.monotonic()
        cluster.start(timeout=120)
        print(f"rados_bench: cluster up in {time.monotonic() - t:.1f} s ({cluster.conf})", file=sys.stderr)
        bench = Bench(cluster, tmp, size, runtime, args.trim_timeout, profile=args.profile, py_spy=py_spy)
        bench.make_pool()
        for i in range(runs):
            print(f"run {i + 1}/{runs} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
            try:
                results.append(bench.one_run(i))
            except Exception as e:   # report the runs that finished; exit 1
                failed = f"run {i + 1} failed: {type(e).__name__}: {e}"
                print(f"rados_bench: {failed}", file=sys.stderr)
                break
    finally:
        if bench is not None:
            try:
                bench.close()
            except Exception as e:
                print(f"rados_bench: closing: {e}", file=sys.stderr)
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    if not results:
        return 1
    med = {p: {row: statistics.median(r["rows"][p][row] for r in results) for row in results[0]["rows"][p]}
           for p in PEERS}
    table, lines = report(med)
    code1 = code_version()
    code = f"at the start {code0}; at the end {code1}" if code1 != code0 else code0
    print(f"\n## {started:%Y-%m-%d %H:%M} - vdisk on RADOS vs Ceph RBD (bench/rados_bench.py"
          f"{' --quick' if args.quick else ''})\n")
    print(f"Machine: {machine()}; {run(['ceph', '--version'])[1].strip()}; "
          f"{run(['fio', '--version'])[1].strip()}.")
    print(f"Code: {code}. Load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start, "
          f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at the end "
          f"({(datetime.datetime.now() - started).total_seconds() / 60:.1f} min).")
    print(f"One mon + one memstore OSD on 127.0.0.1, pool size 1, 8 PGs; {size // MIB} MiB per disk; "
          f"{runtime:g} s per I/O row; median of {len(results)} interleaved run(s)"
          + (f" ({failed})" if failed else "") + ".\n")
    print("\n".join(table))
    print("\nPer run (vdisk | rbd):")
    for i, r in enumerate(results):
        print(f"  run {i + 1}: " + "; ".join(
            f"{row}: {_fmt(row, r['rows']['vdisk'][row])} | {_fmt(row, r['rows']['rbd'][row])}"
            for row in r["rows"]["vdisk"]))
        for p in PEERS:
            print(f"    {p}: {json.dumps(r['extra'][p])}")
    print("\nCPU per I/O, medians (us): vdisk server (nbdkit, all threads) | fio with vdisk | fio with RBD (librbd):")
    for name, *_ in IO_ROWS:
        key = f"{name} CPU us/IO"

        def cpu(peer, what):
            xs = [r["extra"][peer][key][what] for r in results if what in r["extra"][peer].get(key, {})]
            return f"{statistics.median(xs):,.0f}" if xs else "-"
        print(f"  {name}: {cpu('vdisk', 'server_cpu')} | {cpu('vdisk', 'fio_cpu')} | {cpu('rbd', 'fio_cpu')}")
    if bench.profiles:
        print("\nProfiles (py-spy of the vdisk server's nbdkit, --profile):")
        for path in bench.profiles:
            print("\n".join(profile_summary(path)))
    print("\nIssue 16 targets:\n")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started.isoformat(), "machine": machine(), "code": code, "size": size,
                       "runtime": runtime, "runs": runs, "load": [load0, load1], "results": results,
                       "medians": med, "failed": failed}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
