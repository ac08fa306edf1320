"""Convert benchmark: ``vdisk convert`` of a qcow2 chain beside ``qemu-img convert -O raw``.

    .venv/bin/python bench/convert_bench.py [--size 4G] [--layers 10] [--percent 5] [--runs 3]
                                            [--dir /tmp/convert-bench] [--cold] [--verify]
                                            [--settle 15] [--client-iops 500] [--no-online]
                                            [--profile] [--keep] [--chain DIR]

The chain (issue 12): ``--layers`` qcow2 images (64 KiB clusters) over one
``--size`` disk, built with qemu-img and qemu-io only. The base is filled
with data (qemu-io ``write -P``, 64 MiB per command, a pattern per command);
each layer above it rewrites ``--percent`` of the blocks, picked at random
(seeded) - a block being one 64 KiB qcow2 cluster, so that a layer's own
data is exactly the blocks it rewrote and not the copy-on-write of whole
clusters around smaller writes (``--block 4096`` shows that instead).

Then, in the same run, ``--runs`` repetitions of each, rotating which goes
first: ``vdisk convert TOP OUT`` (every layer a snapshot) and ``qemu-img
convert -t writeback -O raw TOP OUT.raw`` (the chain flattened: every
snapshot lost). Both are timed as whole commands (process start, qemu-img
info/map and qemu-nbd start-up included) and both end durable: vdisk commits
with fdatasync, ``-t writeback`` makes qemu-img fdatasync the output at the
end. Before each command the outputs of the last one are deleted and
``sync`` is run, and the chain's files are read into the page cache (warm,
the default: this VM reclaims cold page cache within minutes, so "cold"
would mean whatever it happened to evict) or, with ``--cold``, evicted with
``posix_fadvise(DONTNEED)`` (only the chain's own files: dropping the whole
cache would slow everyone else on the machine); the same for both tools.
Memory too: this VM (firecracker, virtio-balloon free page reporting) hands
free memory back to the host within seconds, and the first touch of such a
page costs ~10 us (pwrite into new page cache: ~370 MiB/s, against ~4 GB/s
into pages freed a moment ago). Whichever command ran right after a large
output was deleted got the cheap pages, so before each command the bench
waits ``--settle`` seconds (default 15) after deleting the last outputs:
every command then starts with the host holding the free memory.

Rates: vdisk reads each layer's own data (the sum of ``qemu-img map`` depth 0
data extents over the layers: "layer bytes"); qemu-img reads the flattened
image's data once (its allocated virtual bytes). Each tool's rate in the bytes
it reads is the issue's figure (target: vdisk >= 0.5 x qemu-img). Layer bytes
divided by qemu-img's time is printed too, but it is just the time ratio in
other units: qemu-img never reads the layer bytes (the lower layers' copies of
rewritten blocks are skipped), so as a rate it flatters it. Space: the vdisk's
``physical_bytes`` (blocks allocated in its data file, every snapshot
included; ``vdisk info --json``) against the layer bytes (target: within 10%).
The issue's third row: ``vdisk convert --online TOP OUT`` (timed: "ready"),
then ``vdisk serve OUT`` converts in the background while an NBD client
(libnbd, this process) writes 4 KiB blocks of random data at random places,
``--client-iops`` a second (default 500), a flush every 64; timed from the
start of ``convert --online`` until the server's info says the conversion
is complete (polled every 0.1 s through the control socket), then up to 5,000
of the client's blocks are read back and checked (target: within 2x the
offline time). It takes its turn in the same rotation as the other two
(``--no-online`` skips it).

``--profile`` runs one more conversion in process under cProfile and prints
where the converting thread's time goes (the reader thread is not profiled:
time the writer spends waiting for it shows as the queue's ``get``).
``--verify`` checks one untimed conversion with ``vdisk convert --verify``.
``--keep`` leaves the chain in ``--dir``; ``--chain DIR`` reuses one (it must
have been built with the same options). Scratch space at 4 GiB: about 6 GiB
for the chain, 6 GiB for the vdisk and 4 GiB for the raw image.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import machine  # noqa: E402  (bench/ is the script's directory)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
FILL_WRITE = 64 * MIB
CLUSTER = 64 * KIB
TIMEOUT = 3600                  # any one command; a 4 GiB conversion takes about a minute here
VDISK = os.path.join(os.path.dirname(sys.executable), "vdisk")


def parse_size(text: str) -> int:
    units = {"k": KIB, "m": MIB, "g": GIB}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed: {(p.stderr or p.stdout).strip()[-500:]}")
    return p


def qemu_io(img: str, commands: list[str]):
    run(["qemu-io", "-f", "qcow2", "-t", "unsafe", img], input="\n".join(commands) + "\n")


# ------------------------------------------------------------------ the chain

def build_chain(where: str, size: int, layers: int, percent: float, block: int, seed: int) -> list[str]:
    """The chain's files, base first (made with qemu-img and qemu-io only)."""
    rng = random.Random(seed)
    paths = [os.path.join(where, f"layer{i:02d}.qcow2") for i in range(layers)]
    t = time.perf_counter()
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}", paths[0], str(size)])
    qemu_io(paths[0], [f"write -P {1 + i % 250} {off} {min(FILL_WRITE, size - off)}"
                       for i, off in enumerate(range(0, size, FILL_WRITE))])
    blocks = size // block
    per_layer = max(1, round(blocks * percent / 100))
    for k in range(1, layers):
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
             "-b", paths[k - 1], "-F", "qcow2", paths[k]])
        picks = sorted(rng.sample(range(blocks), per_layer))
        runs: list[list[int]] = []
        for b in picks:
            if runs and runs[-1][1] == b:
                runs[-1][1] = b + 1
            else:
                runs.append([b, b + 1])
        qemu_io(paths[k], [f"write -P {(0x40 + 7 * k + j) % 250 + 1} {a * block} {(b - a) * block}"
                           for j, (a, b) in enumerate(runs)])
    os.sync()
    print(f"  chain built in {time.perf_counter() - t:.1f} s: {layers} layers, {per_layer} blocks of "
          f"{block // KIB} KiB rewritten per layer above the base", flush=True)
    return paths


def layer_bytes(path: str) -> tuple[int, int]:
    """(data, zero) bytes a layer holds itself: ``qemu-img map`` depth 0."""
    p = run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", path])
    data = zero = 0
    for e in json.loads(p.stdout):
        if e.get("depth", 0) != 0 or not e.get("present", True):
            continue
        if e.get("data") and not e.get("zero"):
            data += e["length"]
        else:
            zero += e["length"]
    return data, zero


def flat_data_bytes(top: str) -> int:
    """Bytes of data the flattened chain reads as (what qemu-img convert reads)."""
    p = run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", top])
    return sum(e["length"] for e in json.loads(p.stdout) if e.get("data") and not e.get("zero"))


# ------------------------------------------------------------------ caches and timing

def prepare_cache(paths: list[str], cold: bool):
    """The same for both tools: sync, then the chain's files warm (read) or evicted."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            if cold:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 8 * MIB):
                    pass
        finally:
            os.close(fd)


def children_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def timed(cmd) -> tuple[float, float, float, str]:
    """(wall s, CPU s of the command and its children, of which system, stdout)."""
    (u, s), t = children_cpu(), time.perf_counter()
    p = run(cmd)
    w = time.perf_counter() - t
    u2, s2 = children_cpu()
    return w, u2 - u + s2 - s, s2 - s, p.stdout


def allocated(path: str) -> int:
    if os.path.isdir(path):
        return sum(allocated(os.path.join(path, n)) for n in os.listdir(path))
    return os.stat(path).st_blocks * 512 if os.path.isfile(path) else 0


def run_vdisk(top: str, out: str) -> dict:
    wall, cpu, sys_, stdout = timed([VDISK, "convert", top, out, "--json", "-q"])
    summary = json.loads(stdout)
    info = json.loads(run([VDISK, "info", "--json", out]).stdout)
    res = {"wall": wall, "cpu": cpu, "sys": sys_, "summary": summary, "physical": info["physical_bytes"],
           "file": info["file_bytes"], "snapshots": len(info["snapshots"]),
           "meta": allocated(os.path.join(out, "meta")), "disk_files": allocated(out)}
    shutil.rmtree(out)
    return res


def run_qemu(top: str, out: str) -> dict:
    wall, cpu, sys_, _ = timed(["qemu-img", "convert", "-t", "writeback", "-f", "qcow2", "-O", "raw", top, out])
    res = {"wall": wall, "cpu": cpu, "sys": sys_, "file": allocated(out)}
    os.unlink(out)
    return res


class Client:
    """4 KiB random writes (random data, a flush every FLUSH_EVERY) through NBD
    at up to ``iops``, in a thread, until stopped; remembers what it wrote."""

    FLUSH_EVERY = 64

    def __init__(self, sock: str, size: int, iops: int, seed: int):
        import threading
        import nbd
        self.h = nbd.NBD()
        self.h.connect_unix(sock)
        self.size, self.iops = size, iops
        self.rng = random.Random(seed)
        self.pool = self.rng.randbytes(1 << 20)
        self.written: dict[int, int] = {}       # offset -> pool offset of its data
        self.lat: list[float] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.perf_counter()
        self.t.start()

    def _run(self):
        try:
            blocks = self.size // 4096
            n = 0
            while not self.stop.is_set() and time.perf_counter() - self.t0 < TIMEOUT:
                off = self.rng.randrange(blocks) * 4096
                src = self.rng.randrange(0, (1 << 20) - 4096, 512)
                t = time.perf_counter()
                self.h.pwrite(self.pool[src:src + 4096], off)
                n += 1
                if n % self.FLUSH_EVERY == 0:
                    self.h.flush()
                self.lat.append(time.perf_counter() - t)
                self.written[off] = src
                ahead = n / self.iops - (time.perf_counter() - self.t0)
                if ahead > 0:
                    time.sleep(ahead)
            self.h.flush()
        except BaseException as e:          # reported by finish()
            self.error = e

    def finish(self, check: int) -> dict:
        """Stop; read back up to ``check`` of the blocks written (last write wins)."""
        self.stop.set()
        self.t.join()
        secs = time.perf_counter() - self.t0
        if self.error is not None:
            raise RuntimeError(f"the NBD client failed: {self.error}")
        offs = list(self.written)
        random.Random(0).shuffle(offs)
        for off in offs[:check]:
            src = self.written[off]
            if self.h.pread(4096, off) != self.pool[src:src + 4096]:
                raise RuntimeError(f"a client write at {off} reads back wrong after the conversion")
        self.h.shutdown()
        lat = sorted(self.lat) or [0.0]
        return {"writes": len(self.lat), "iops": len(self.lat) / secs, "checked": min(check, len(offs)),
                "p99": lat[int(len(lat) * 0.99)], "max": lat[-1]}


def run_online(top: str, out: str, size: int, iops: int, seed: int) -> dict:
    """convert --online, then vdisk serve converts while a client writes; timed
    from the start of convert --online to the server saying it is complete."""
    from vdisk.control.client import find_server
    t0, c0 = time.perf_counter(), children_cpu()
    run([VDISK, "convert", "--online", top, out, "-q"])
    prepare = time.perf_counter() - t0
    sock = os.path.join(out, "nbd.sock")
    srv = subprocess.Popen([VDISK, "serve", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        while not os.path.exists(sock):
            if srv.poll() is not None:
                raise RuntimeError(f"vdisk serve failed: {srv.stderr.read().strip()[-500:]}")
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("vdisk serve did not start in 60 s")
            time.sleep(0.02)
        client = Client(sock, size, iops, seed)
        with find_server(out) as control:
            while True:
                conv = control.info()["conversion"]
                if conv["complete"]:
                    break
                if srv.poll() is not None or client.error is not None or time.perf_counter() - t0 > TIMEOUT:
                    raise RuntimeError(f"the online conversion did not finish: {conv}, client {client.error}")
                time.sleep(0.1)
        done = time.perf_counter() - t0
        cl = client.finish(check=5000)
        client = None
    finally:
        if client is not None:
            client.stop.set()
        srv.send_signal(15)
        try:
            srv.wait(120)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    u, s_ = children_cpu()
    info = json.loads(run([VDISK, "info", "--json", out]).stdout)
    res = {"wall": done, "prepare": prepare, "cpu": u - c0[0] + s_ - c0[1], "sys": s_ - c0[1],
           "physical": info["physical_bytes"], "snapshots": len(info["snapshots"]), "client": cl}
    shutil.rmtree(out)
    return res


# ------------------------------------------------------------------ profile

# Where the converting thread's time goes: (label, file suffix, function, "cum" or "own").
# cProfile times generators between resumes, so _read_ahead's cumulative time
# is the writer waiting for the reader thread (and for qemu-nbd behind it).
ROWS = (
    ("the whole conversion", "converter.py", "convert", "cum"),
    ("  start: chain facts (qemu-img info), disk created", "converter.py", "start", "cum"),
    ("  qemu-img map of each layer", "chain.py", "own_extents", "cum"),
    ("  qemu-nbd start and stop (Export)", "qemu.py", "__init__", "cum"),
    ("", "qemu.py", "close", "cum"),
    ("  waiting for data (_read_ahead: the reader thread, qemu-nbd)", "converter.py", "_read_ahead", "cum"),
    ("  _write_data, its own Python (the block loop, zero checks)", "converter.py", "_write_data", "own"),
    ("", "", "<method 'count' of 'bytearray' objects>", "own"),
    ("", "", "<method 'count' of 'bytes' objects>", "own"),
    ("  engine write path (Disk.write)", "vdisk/writes.py", "write", "cum"),
    ("    blake3 of each block (_map_written's list)", "vdisk/writes.py", "<listcomp>", "cum"),
    ("    pwrite to the data file", "", "<built-in method posix.pwrite>", "own"),
    ("    sync_file_range (early writeback)", "datastore_file.py", "start_writeback", "cum"),
    ("    commits every AUTO_COMMIT_BLOCKS inside writes", "vdisk/disk.py", "_after_work", "cum"),
    ("  engine zero extents (Disk.zero)", "vdisk/disk.py", "zero", "cum"),
    ("  commits: checkpoints, snapshots, auto (all _commit)", "vdisk/commit.py", "_commit", "cum"),
    ("    of which fdatasync", "", "<built-in method posix.fdatasync>", "own"),
    ("  snapshots (create_snapshot)", "vdisk/disk.py", "create_snapshot", "cum"),
)


def profile(top: str, out: str):
    from vdisk.convert import converter
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    summary = converter.convert(top, out)
    prof.disable()
    wall = time.perf_counter() - t
    shutil.rmtree(out)
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    print(f"\nprofile: one conversion in process, {wall:.1f} s wall, {total:.1f} s own time profiled "
          f"(the converting thread), {summary.read_bytes / 1e6 / wall:.0f} MB/s of layer bytes")
    print("| where | s | share of the conversion |")
    print("|---|---:|---:|")
    label, acc, whole = None, 0.0, None
    for lab, suffix, func, kind in ROWS + (("end", "", "", "own"),):
        if lab and label is not None:
            whole = whole or acc
            print(f"| {label} | {acc:.2f} | {acc / whole:.0%} |")
            acc = 0.0
        if lab == "end":
            break
        if lab:
            label = lab
        for (f, _line, name), (_cc, _nc, tt, ct, _callers) in st.stats.items():
            if name == func and f.replace(os.sep, "/").endswith(suffix):
                acc += ct if kind == "cum" else tt
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
    print("\ntop functions by own time:")
    print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(r"converter|disk.py|writes.py|commit", 16)
    print("\nconverter and engine entry points by cumulative time:")
    print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))


# ------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4G", help="virtual disk size (default 4G; 512M for a quick look)")
    ap.add_argument("--layers", type=int, default=10, help="images in the chain, base included")
    ap.add_argument("--percent", type=float, default=5.0, help="share of the blocks each layer rewrites")
    ap.add_argument("--block", type=int, default=CLUSTER, help="bytes per rewritten block (default 64 KiB, "
                                                                "one qcow2 cluster)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each tool (median)")
    ap.add_argument("--dir", default="/tmp/convert-bench", help="scratch directory (made if missing)")
    ap.add_argument("--cold", action="store_true", help="evict the chain from the page cache before "
                                                        "each command (default: read it in)")
    ap.add_argument("--verify", action="store_true", help="check one untimed conversion with --verify")
    ap.add_argument("--profile", action="store_true", help="profile one more conversion (cProfile)")
    ap.add_argument("--keep", action="store_true", help="leave the chain in --dir")
    ap.add_argument("--chain", help="reuse the chain in this directory (built with the same options)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds to wait after deleting outputs, "
                                                                 "before each command (see above)")
    ap.add_argument("--no-online", action="store_true", help="skip the online conversion row")
    ap.add_argument("--client-iops", type=int, default=500, help="the online row's client: 4 KiB random "
                                                                  "writes per second (default 500)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    if size % CLUSTER or size < CLUSTER or args.layers < 1 or not 0 < args.percent <= 100 \
            or args.block % 512 or size % args.block or not 1 <= args.runs <= 50:
        ap.error("size and --block must be multiples of 64 KiB and 512 bytes, --layers >= 1, "
                 "0 < --percent <= 100, 1 <= --runs <= 50")
    for tool in ("qemu-img", "qemu-io", "qemu-nbd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian package qemu-utils)")
    os.makedirs(args.dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    print(f"convert benchmark, {datetime.date.today()}, {machine()}, qemu-img "
          f"{run(['qemu-img', '--version']).stdout.split()[2]}")
    print(f"disk {size / MIB:.0f} MiB, {args.layers} layers, {args.percent:g}% of {args.block // KIB} KiB blocks "
          f"rewritten per layer, seed {args.seed}, {args.runs} runs each, page cache "
          f"{'evicted (fadvise DONTNEED of the chain)' if args.cold else 'warm (chain read in)'} and "
          f"{args.settle:g} s settle before every command, scratch {tmp}", flush=True)
    vd = run([sys.executable, "-c", "import vdisk, os; print(os.path.dirname(vdisk.__file__))"]).stdout.strip()
    print(f"vdisk code: {vd}", flush=True)
    try:
        if args.chain:
            paths = sorted(os.path.join(args.chain, n) for n in os.listdir(args.chain) if n.endswith(".qcow2"))
            print(f"  reusing the chain in {args.chain} ({len(paths)} layers)")
        else:
            paths = build_chain(tmp, size, args.layers, args.percent, args.block, args.seed)
        top = paths[-1]
        own = [layer_bytes(p) for p in paths]
        layers_data = sum(d for d, _z in own)
        flat = flat_data_bytes(top)
        files = sum(allocated(p) for p in paths)
        print(f"  layer bytes (qemu-img map depth 0, data): {layers_data / MIB:.1f} MiB "
              f"(base {own[0][0] / MIB:.1f}, above it {(layers_data - own[0][0]) / MIB / max(1, len(paths) - 1):.1f} "
              f"each); flattened data {flat / MIB:.1f} MiB; chain files {files / MIB:.1f} MiB", flush=True)

        out_v, out_q = os.path.join(tmp, "out.vdisk"), os.path.join(tmp, "out.raw")
        if args.verify:
            t = time.perf_counter()
            p = run([VDISK, "convert", top, out_v, "--verify", "--json", "-q"])
            s = json.loads(p.stdout)
            shutil.rmtree(out_v)
            print(f"  vdisk convert --verify: clean, {s['verified_bytes'] / MIB:.0f} MiB compared, "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        samples: dict[str, list[dict]] = {"vdisk": [], "qemu": [], "online": []}
        tools = ("vdisk", "qemu") if args.no_online else ("vdisk", "qemu", "online")
        for rep in range(args.runs):
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]
            for tool in order:
                time.sleep(args.settle)
                prepare_cache(paths, args.cold)
                if tool == "online":
                    r = run_online(top, out_v, size, args.client_iops, args.seed + rep)
                elif tool == "vdisk":
                    r = run_vdisk(top, out_v)
                else:
                    r = run_qemu(top, out_q)
                samples[tool].append(r)
                if tool == "online":
                    c = r["client"]
                    extra = (f" (ready after {r['prepare']:.2f} s), client {c['writes']} writes at {c['iops']:.0f}/s, "
                             f"p99 {c['p99'] * 1e3:.1f} ms, max {c['max'] * 1e3:.0f} ms, {c['checked']} read back "
                             f"right; physical {r['physical'] / MIB:.1f} MiB")
                elif tool == "vdisk":
                    extra = f", read {r['summary']['read_bytes'] / MIB:.1f} MiB, physical {r['physical'] / MIB:.1f} MiB"
                else:
                    extra = f", wrote {r['file'] / MIB:.1f} MiB"
                print(f"  run {rep + 1} {tool:5}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU ({r['sys']:.2f} system){extra}", flush=True)
        if args.profile:
            prepare_cache(paths, args.cold)
            profile(top, out_v)
    finally:
        if args.keep and not args.chain:
            print(f"  chain kept in {tmp}")
            for name in os.listdir(tmp):
                if not name.endswith(".qcow2"):
                    p = os.path.join(tmp, name)
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    med = {t: {k: statistics.median(s[k] for s in samples[t]) for k in ("wall", "cpu", "sys")}
           for t in samples if samples[t]}
    v, q = samples["vdisk"], samples["qemu"]
    tv, tq = med["vdisk"]["wall"], med["qemu"]["wall"]
    read_v = v[0]["summary"]["read_bytes"]
    phys = statistics.median(s["physical"] for s in v)
    meta = statistics.median(s["meta"] for s in v)
    rate_v, rate_q = layers_data / tv / 1e6, flat / tq / 1e6
    ratio = rate_v / rate_q
    space = phys / layers_data
    print()
    if read_v != layers_data:
        print(f"note: vdisk read {read_v} bytes, the layers hold {layers_data} (qemu-img map depth 0)")
    print("MB = 10^6 bytes; medians of", args.runs)
    print(f"| row | vdisk convert | qemu-img convert -O raw | vdisk / qemu-img | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| time, wall | {tv:.2f} s | {tq:.2f} s | {tv / tq:.2f}x the time | - |")
    print(f"| CPU (process and children: qemu-nbd, qemu-img) | {med['vdisk']['cpu']:.2f} s | {med['qemu']['cpu']:.2f} s | "
          f"{med['vdisk']['cpu'] / med['qemu']['cpu']:.2f} | - |")
    print(f"| of which system | {med['vdisk']['sys']:.2f} s | {med['qemu']['sys']:.2f} s | "
          f"{med['vdisk']['sys'] / max(med['qemu']['sys'], 1e-9):.2f} | - |")
    print(f"| bytes read | {layers_data / MIB:.0f} MiB (layer bytes) | {flat / MIB:.0f} MiB (flattened data) | "
          f"{layers_data / flat:.2f} | - |")
    print(f"| rate, each in the bytes it reads | {rate_v:.0f} MB/s | {rate_q:.0f} MB/s | {ratio:.2f} | "
          f">= 0.50: {'pass' if ratio >= 0.5 else 'miss'} |")
    cv, cq = med["vdisk"]["cpu"], med["qemu"]["cpu"]
    print(f"| rate per CPU second, each in the bytes it reads | {layers_data / cv / 1e6:.0f} MB/s | "
          f"{flat / cq / 1e6:.0f} MB/s | {(layers_data / cv) / (flat / cq):.2f} | (steadier on a busy machine) |")
    print(f"| rate in layer bytes (for qemu-img only the time ratio) | {rate_v:.0f} MB/s | "
          f"{layers_data / tq / 1e6:.0f} MB/s | {tq / tv:.2f} | - |")
    print(f"| written: vdisk physical_bytes / raw file allocated | {phys / MIB:.1f} MiB | "
          f"{statistics.median(s['file'] for s in q) / MIB:.1f} MiB | - | - |")
    print(f"| vdisk physical_bytes / layer bytes | {space:.3f} | - | - | within 10%: "
          f"{'pass' if abs(space - 1) <= 0.10 else 'miss'} |")
    print(f"| vdisk metadata (meta/, allocated) | {meta / MIB:.1f} MiB | - | - | - |")
    print(f"| snapshots kept | {v[0]['snapshots']} | 0 (flattened) | - | - |")
    if samples["online"]:
        o = samples["online"]
        to = med["online"]["wall"]
        iops = statistics.median(x["client"]["iops"] for x in o)
        mx = max(x["client"]["max"] for x in o)
        print(f"| online conversion, a client writing ({iops:.0f} x 4 KiB/s), to complete | {to:.2f} s "
              f"(ready in {statistics.median(x['prepare'] for x in o):.2f} s) | - | {to / tv:.2f}x vdisk offline | "
              f"<= 2x offline: {'pass' if to <= 2 * tv else 'miss'} |")
        print(f"| online: client write latency p99 / worst | {statistics.median(x['client']['p99'] for x in o) * 1e3:.1f}"
              f" ms / {mx * 1e3:.0f} ms | - | - | - |")
        print(f"| online: physical_bytes / layer bytes (client writes included) | "
              f"{statistics.median(x['physical'] for x in o) / layers_data:.3f} | - | - | - |")
    else:
        print("| online conversion, a client writing | not run (--no-online) | - | - | <= 2x offline |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
