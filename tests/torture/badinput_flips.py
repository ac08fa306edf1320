"""Seeded byte flips in a closed disk, and what each front end makes of them.

A disk with snapshots is built once (its exact content known); each round
copies it, flips bytes in ``meta/data.mdb`` (in pages that hold something)
or in ``DISK/data``, and then asks every way in:

* ``vdisk verify --data``: exit 0 (clean), 1 (problems) or the code of a
  clean refusal, never a traceback, an internal error or a signal; and
  never 0 when a plain read of the same disk meets damage;
* the API in a child (badinput_probe.py), read-only and writable: the open
  fails with one VdiskError, or every block reads right or fails with a
  VdiskError - never wrong bytes;
* ``vdisk serve`` (some rounds): starts or refuses in one line; every read
  through NBD returns the right bytes or an errno; the server survives.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys

from load_model import pattern
from load_serve import Server, close_handle, import_nbd

BS = 4096
SIZE = 4 << 20
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "badinput_probe.py")


def build(path: str, expected_dir: str, seed: int) -> dict[str, bytes]:
    """A disk whose trees have inner nodes (scattered writes), three
    snapshots (one deleted) and holes; returns each export's content and
    writes it to ``expected_dir`` for the probe."""
    from vdisk import Disk
    rng = random.Random(seed)
    model = bytearray(SIZE)
    out: dict[str, bytes] = {}
    k = 1
    with Disk.create(path, SIZE) as d:
        for snap in ("s1", "s2", "s3"):
            for _ in range(150):
                b, n = rng.randrange(SIZE // BS), rng.choice([1, 1, 1, 2, 5])
                n = min(n, SIZE // BS - b)
                data = pattern(k, b * BS, (b + n) * BS)
                k += 1
                d.write(b * BS, data)
                model[b * BS:(b + n) * BS] = data
            for _ in range(5):
                b = rng.randrange(SIZE // BS - 8)
                d.trim(b * BS, 8 * BS)
                model[b * BS:(b + 8) * BS] = bytes(8 * BS)
            d.create_snapshot(snap)
            out[snap] = bytes(model)
        d.write(7, b"sub-block write")
        model[7:22] = b"sub-block write"
        d.delete_snapshot("s2")
        del out["s2"]
        out[""] = bytes(model)
    os.makedirs(expected_dir)
    for name, data in out.items():
        with open(os.path.join(expected_dir, f"snap-{name}.bin" if name else "running.bin"), "wb") as f:
            f.write(data)
    return out


def used_pages(path: str, page: int = 4096) -> list[int]:
    """Offsets of the pages of a file that hold a non-zero byte."""
    out = []
    with open(path, "rb") as f:
        off = 0
        while chunk := f.read(page):
            if chunk.count(0) != len(chunk):
                out.append(off)
            off += len(chunk)
    return out


# In meta/data.mdb, besides any used page: LMDB's two meta pages, and the
# neighbourhood of vdisk's own records and their keys, which carry no checksum.
META_MARKS = (b"VDISKCFG", b"disk/state", b"disk/snap/", b"disk/config", b"snap/s")


def hot_spots(path: str) -> list[int]:
    with open(path, "rb") as f:
        data = f.read()
    out = [o for o in range(0, min(len(data), 2 * 4096), 16)]
    for mark in META_MARKS:
        pos = data.find(mark)
        while pos >= 0:
            out += list(range(max(0, pos - 24), min(len(data), pos + 64)))
            pos = data.find(mark, pos + 1)
    return out


def flip(path: str, rng: random.Random, aim: bool = False) -> list[tuple[int, int]]:
    """Damage ``path`` in place: one byte, a burst, or a few scattered bytes,
    inside pages that hold data (``aim``: near LMDB's meta pages and vdisk's
    records instead). Returns (offset, xor mask) of each."""
    pages = used_pages(path)
    if not pages:
        return []
    kind = rng.random()
    if aim:
        spots = rng.sample(hot_spots(path), rng.choice([1, 1, 2, 4]))
    elif kind < 0.6:
        spots = [rng.choice(pages) + rng.randrange(4096)]
    elif kind < 0.8:
        start = rng.choice(pages) + rng.randrange(4096 - 16)
        spots = list(range(start, start + rng.randint(2, 16)))
    else:
        spots = [rng.choice(pages) + rng.randrange(4096) for _ in range(rng.randint(2, 8))]
    size = os.path.getsize(path)
    done = []
    with open(path, "r+b") as f:
        for off in spots:
            if off >= size:
                continue
            mask = rng.choice([1 << rng.randrange(8), rng.randrange(1, 256)])
            f.seek(off)
            byte = f.read(1)[0]
            f.seek(off)
            f.write(bytes([byte ^ mask]))
            done.append((off, mask))
    return done


def probe(disk: str, expected_dir: str, mode: str) -> tuple[dict | None, str]:
    """(the probe's report, a problem with the process itself or '')."""
    r = subprocess.run([sys.executable, PROBE, disk, expected_dir, mode], capture_output=True, text=True,
                       timeout=120)
    if r.returncode < 0:
        return None, f"probe ({mode}) killed by {signal.Signals(-r.returncode).name}: {r.stderr[-500:]}"
    if r.returncode:
        return None, f"probe ({mode}) exit {r.returncode}: {r.stderr[-1500:]}"
    return json.loads(r.stdout), ""


def judge_probe(report: dict, mode: str) -> tuple[list[str], bool]:
    """(problems, whether damage was seen) of one probe report."""
    problems = []
    o = report["open"]
    if o is not None:
        if not o["vdisk"]:
            problems.append(f"open ({mode}) raised a raw {o['class']}: {o['message']}")
        elif "\n" in o["message"].strip():
            problems.append(f"open ({mode}): error is not one line: {o['message']!r}")
        return problems, True
    damaged = False
    if isinstance(report["listed"], dict):
        damaged = True
        if not report["listed"]["vdisk"]:
            problems.append(f"snapshot listing ({mode}) raised a raw {report['listed']['class']}: "
                            f"{report['listed']['message']}")
    elif report["listed"] != sorted(n for n in report["exports"] if n and "/" not in n):
        damaged = True    # a name changed: the old one must now fail to open, which is checked below
    for name, res in report["exports"].items():
        label = f"{mode}, export {name!r} ('' is the running point)"
        if "open" in res:
            damaged = True
            if not res["open"]["vdisk"]:
                problems.append(f"{label}: opening raised a raw {res['open']['class']}: {res['open']['message']}")
            continue
        if res["wrong"]:
            problems.append(f"{label}: WRONG BYTES at offsets {res['wrong'][:8]}")
        if res["errors"]:
            damaged = True
        for raw in res["raw"]:
            problems.append(f"{label}: a read raised a raw {raw['class']}: {raw['message']}")
    wrote = report.get("wrote")
    if isinstance(wrote, dict) and not wrote["vdisk"]:
        problems.append(f"write/flush ({mode}) raised a raw {wrote['class']}: {wrote['message']}")
    if "close" in report and not report["close"]["vdisk"]:
        problems.append(f"close ({mode}) raised a raw {report['close']['class']}: {report['close']['message']}")
    return problems, damaged


def copy(src: str, dst: str):
    shutil.copytree(src, dst, symlinks=True)


# ---------------------------------------------------------------- precise damage, for reproducers

def _state_field(offset: int):
    def edit(t):
        b = bytearray(t.get(b"disk/state"))
        v = int.from_bytes(b[offset:offset + 8], "little")
        b[offset:offset + 8] = (v // 2).to_bytes(8, "little")
        t.put(b"disk/state", bytes(b))
    return edit


def _halve(key: bytes):
    def edit(t):
        t.put(key, (int.from_bytes(t.get(key), "little") // 2).to_bytes(8, "little"))
    return edit


def _rename(old: bytes, new: bytes):
    def edit(t):
        v = t.get(old)
        t.delete(old)
        t.put(new, v)
    return edit


# What one flipped byte in a record without a checksum does (each seen in the
# random campaign), applied exactly: the LMDB structure stays valid.
DAMAGE = {
    "store header key renamed": _rename(b"format", b"forMat"),
    "node counter halved": _halve(b"counter/node"),
    "vba_next halved": _state_field(8),
    "watermark halved": _state_field(16),
    "tree key not UTF-8": _rename(b"tree/snap/s1", b"tree/snap/s\x851"),
    "snapshot key not UTF-8": _rename(b"disk/snap/s1", b"disk/snap/s\x851"),
}


def damage(disk: str, kind: str):
    """Apply DAMAGE[kind] to a closed disk through LMDB itself."""
    import lmdb
    env = lmdb.open(os.path.join(disk, "meta"), max_dbs=4, subdir=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as t:
            DAMAGE[kind](t)
    finally:
        env.close()


def serve_damaged(disk: str, expected: dict[str, bytes], logs: str) -> tuple[list[str], bool]:
    """(problems, damage seen) serving a damaged disk and reading every export."""
    from badinput_nbd import unexpected_exceptions
    nbd = import_nbd()
    try:
        srv = Server(disk, log_dir=logs)
    except AssertionError as e:
        msg = str(e)
        if "Traceback" in msg or "internal error" in msg:
            return [f"vdisk serve refused with a traceback: {msg[-1500:]}"], True
        return [], True
    problems, damaged = [], False
    try:
        for name, want in expected.items():
            try:
                h = srv.connect(name)
            except nbd.Error:
                damaged = True
                continue
            try:
                for off in range(0, len(want), 64 << 10):
                    try:
                        got = bytes(h.pread(64 << 10, off))
                    except nbd.Error:
                        damaged = True
                        got = None
                    if got is None:
                        for o in range(off, off + (64 << 10), BS):
                            try:
                                if bytes(h.pread(BS, o)) != want[o:o + BS]:
                                    problems.append(f"serve: export {name!r} WRONG BYTES at {o}")
                            except nbd.Error as e:
                                if not e.errnum:
                                    problems.append(f"serve: export {name!r}: read failed without an errno: {e}")
                    elif got != want[off:off + (64 << 10)]:
                        problems.append(f"serve: export {name!r} WRONG BYTES in {off}+64K")
            finally:
                close_handle(h)
        if not srv.running():
            problems.append(f"serve: the server died:\n{srv.log()[-1500:]}")
        problems += [f"serve: raw exception in the log: {b}" for b in unexpected_exceptions(srv.log())]
    finally:
        srv.stop()
    return problems, damaged
