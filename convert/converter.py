"""Converting a redo-log chain into one container, each layer a snapshot.

The method (design notes, 4), offline: base upward, each state of the chain
is written into the running point as the difference from the state below it
- for a layer, exactly the ranges it holds itself (``own_extents``: data as
data, zeros it wrote as zero extents, ranges it leaves to its backing not
at all) - and then frozen as a snapshot. The top layer's current state is
the running point and is not snapshotted. The cost therefore follows the
data the layers hold, not the image size times the depth.

A qcow2 layer's internal snapshots are states of that layer older than its
current one; each becomes a snapshot too, in order. They share most of
their clusters, which qemu does not say, so the ranges either state holds
are compared with what the running point already has, and only the blocks
that differ are written.

Progress is the record of :mod:`vdisk.convert.format`, committed with the
data (every ``CHECKPOINT_BYTES`` and with every snapshot), so an interrupted
conversion (Ctrl-C, SIGKILL, a full disk, a power cut) resumes from its
last checkpoint with :func:`resume`: the blocks after it are written again
into the same running-point VBAs, never as second copies.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import threading
import time
from dataclasses import dataclass

import vdisk
from vdisk.errors import AlreadyExists, ImageError, NotFound
from vdisk.location import is_rados
from vdisk.snapshots.verify_runs import merge

from . import format as cfmt
from .chain import Layer, own_extents, read_chain
from .compare import compare
from .qemu import Export
# Planning and the record live in .state; importable from here too.
from .state import check_layers, disk_label, layer_facts, plan, progress_of, record_of, status  # noqa: F401

CHUNK_BYTES = 4 << 20
CHECKPOINT_BYTES = 256 << 20
READ_AHEAD = 4
PROGRESS_PHASE = "convert"


@dataclass
class Summary:
    disk: str
    layers: int
    snapshots: list[str]
    read_bytes: int
    written_bytes: int
    zero_bytes: int
    skipped_bytes: int
    seconds: float
    verified_bytes: int | None = None
    hole_bytes: int = 0
    imported: bool = False      # an import (one flattened state), not a chain


def start(source: str, disk_path: str, *, names: list[str] | None = None, fmt: str | None = None,
          flat: bool = False, online: bool = False, rate: int = 0):
    """Create ``disk_path`` for converting ``source``; returns the open disk.

    ``disk_path``: a new container's path, or ``rados:POOL/NAME`` (a string,
    or a vdisk.location.RadosLocation naming the cluster). Everything about
    the chain is checked before the disk exists, so a bad chain leaves
    nothing behind.
    """
    if _exists(disk_path):
        raise AlreadyExists(f"{disk_path} already exists; convert makes a new disk")
    layers = read_chain(source, fmt)
    if flat:
        # An import: the image as it reads, one state, no snapshots.
        layers = layers[-1:]
        layers[0].internal = []
    steps = plan(layers, names)
    size = layers[0].size
    block_size = 4096 if size % 4096 == 0 else 512
    disk = vdisk.Disk.create(disk_path, size, block_size)
    try:
        # A rados disk opens on any host, its layers' paths only on this one.
        rec = cfmt.Progress(source, [layer_facts(ly) for ly in layers], steps, started=time.time(), flat=flat,
                            online=online, rate=rate, host=socket.gethostname() if is_rados(disk_path) else None)
        disk.stage_extra_record(cfmt.RECORD_NAME, cfmt.encode(rec))
        if online:
            # Room for every state's blocks in the anchor's own VBA range
            # (an upper bound: VBAs are numbers, only the ones used cost).
            disk.begin_anchor(len(steps) * (size // block_size) + 1)      # commits the record with it
        else:
            disk.flush()
    except BaseException:
        # Without its record the container would pass for a complete, empty
        # disk; it did not exist before this call, so it goes. (A rados disk
        # stays, empty: vdisk cannot remove one yet; docs/CONVERT.md.)
        disk.close()
        if not is_rados(disk_path):
            shutil.rmtree(disk_path, ignore_errors=True)
        raise
    return disk


def _exists(disk_path) -> bool:
    if not is_rados(disk_path):
        return os.path.lexists(disk_path)
    try:
        vdisk.Disk.open(disk_path, readonly=True).close()
    except NotFound:
        # No such disk (or no such pool, or a creation that died: the
        # create below says which, or takes it over).
        return False
    return True


def run(disk, progress=None, on_change=None) -> Summary:
    """Finish the conversion recorded in ``disk`` (open for writing).

    ``on_change()``, if given, is called after each snapshot it takes and
    at the end (a mount refreshes its snapshots/ folder with it).
    """
    t0 = time.monotonic()
    rec = progress_of(disk)
    if rec is None:
        return Summary(disk_label(disk), 0, [], 0, 0, 0, 0, 0.0)
    layers = check_layers(rec)
    conv = _Converter(AnchorTarget(disk, rec.rate) if rec.online else disk, rec, layers, progress)
    while rec.next < len(rec.steps):
        step = rec.steps[rec.next]
        conv.step(step)
        if step.snapshot is not None and on_change is not None:
            on_change()
    rec.complete = True
    disk.stage_extra_record(cfmt.RECORD_NAME, cfmt.encode(rec))
    if rec.online:
        origin = disk.finish_anchor()            # commits the record with the merge
        if origin is not None:
            origin.close()
    else:
        disk.flush()
    if on_change is not None:
        on_change()
    st = rec.stats
    return Summary(disk_label(disk), len(layers), [s.snapshot for s in rec.steps if s.snapshot],
                   st["read"], st["written"], st["zeros"], st["skipped"], time.monotonic() - t0,
                   hole_bytes=st.get("holes", 0), imported=rec.flat)


def convert(source: str, disk_path: str, *, names=None, fmt=None, progress=None,
            verify: bool = False) -> Summary:
    """Offline conversion: :func:`start` then :func:`run`, in the foreground."""
    disk = start(source, disk_path, names=names, fmt=fmt)
    with disk:
        rec = progress_of(disk)
        summary = run(disk, progress)
        if verify:
            summary.verified_bytes = verify_states(disk, rec, progress)
        return summary


def open_for_verify(disk_path: str):
    return vdisk.Disk.open(disk_path, readonly=True)


def resume(disk_path: str, progress=None, verify: bool = False, break_lock: bool = False) -> Summary:
    """Finish the conversion recorded in ``disk_path``; ``break_lock``: take
    a rados disk over from a converter that died (vdisk.Disk.open)."""
    with vdisk.Disk.open(disk_path, break_lock=break_lock) as disk:
        rec = progress_of(disk)
        if rec is not None and rec.online and disk.converting:
            disk.attach_origin(open_origin(rec))
        summary = run(disk, progress)
        # A complete conversion can still be verified, while its sources exist.
        rec = record_of(disk)
        if verify and rec is not None:
            summary.verified_bytes = verify_states(disk, rec, progress)
        return summary


def verify_states(disk, rec: cfmt.Progress, progress=None) -> int:
    """Compare every snapshot the conversion made, and the running point,
    with the state of the chain it came from; bytes compared."""
    total = 0
    for i, step in enumerate(rec.steps):
        f = rec.layers[step.layer]
        view = disk.open_snapshot(step.snapshot) if step.snapshot else disk
        what = (f"snapshot {step.snapshot!r}" if step.snapshot else "the running point") + \
            f" against {f['path']}" + (f" (internal snapshot {step.internal})" if step.internal else "")
        if progress is not None:
            progress(f"verify {i + 1}/{len(rec.steps)}", 0, 1)
        with Export(f["path"], f["format"], snapshot=step.internal, what=f["path"]) as src:
            total += compare(view, src, what)
        if progress is not None:
            progress(f"verify {i + 1}/{len(rec.steps)}", 1, 1)
    return total


class QemuOrigin:
    """The top image of the chain, read-only through qemu-nbd: what the running
    point reads where it maps nothing during an online conversion."""

    def __init__(self, path: str, fmt: str):
        self._export = Export(path, fmt, what=path)
        self._lock = threading.Lock()
        self.size = self._export.size

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            return self._export.pread(length, offset)

    def close(self):
        with self._lock:
            self._export.close()


def open_origin(rec: cfmt.Progress) -> QemuOrigin:
    top = check_layers(rec)[-1]
    return QemuOrigin(top.path, top.format)


class AnchorTarget:
    """The disk as an online conversion writes it: states into the anchor,
    snapshots of the anchor; clients keep the running point. Each write
    first checks whether the disk is closing, so close() stops the
    conversion within one chunk (it resumes at the next open)."""

    def __init__(self, disk, rate: int = 0):
        self._disk = disk
        self._view = disk.anchor_view()
        self._rate = rate
        self._t0 = time.monotonic()
        self._bytes = 0

    def write(self, offset: int, data) -> None:
        self._disk.check_cancelled()
        self._disk.anchor_write(offset, data)
        self._pace(len(data))

    def zero(self, offset: int, length: int) -> None:
        self._disk.check_cancelled()
        self._disk.anchor_zero(offset, length)

    def _pace(self, n: int):
        """Keep to the conversion's rate (outside the disk's lock; at most
        half a second at a time, so close() is never kept waiting long)."""
        if not self._rate:
            return
        self._bytes += n
        ahead = self._bytes / self._rate - (time.monotonic() - self._t0)
        if ahead > 0:
            time.sleep(min(ahead, 0.5))

    def read(self, offset: int, length: int) -> bytes:
        return self._view.read(offset, length)

    def create_snapshot(self, name: str):
        return self._disk.anchor_snapshot(name)

    def __getattr__(self, name):
        # flush, stage_extra_record, block_size, path, ...: the disk's own.
        return getattr(self._disk, name)


class _Converter:
    def __init__(self, disk, rec: cfmt.Progress, layers: list[Layer], progress):
        self.disk = disk
        self.rec = rec
        self.layers = layers
        self.progress = progress
        self.bs = disk.block_size
        self.zero_block = bytes(self.bs)
        self._since_checkpoint = 0

    # ------------------------------------------------------------ steps

    def step(self, step: cfmt.Step):
        ly = self.layers[step.layer]
        prev = self.rec.steps[self.rec.next - 1] if self.rec.next else None
        same_layer = prev is not None and prev.layer == step.layer
        what = f"{ly.path}" + (f" (internal snapshot {step.internal})" if step.internal else "")
        with Export(ly.path, ly.format, snapshot=step.internal, depth=True, what=what) as src:
            if src.size != ly.size:
                raise ImageError(f"{what}: qemu-nbd reports {src.size} bytes, the chain {ly.size}")
            if step.internal is None and not same_layer:
                ranges = [(e.offset, e.length, e.data) for e in own_extents(ly, flat=self.rec.flat)]
                self._copy(src, ranges, compare=False)
            else:
                # A state of a layer with internal snapshots: its ranges and the
                # previous state's, compared with what the disk holds.
                ranges = src.own_ranges()
                if same_layer:
                    with Export(ly.path, ly.format, snapshot=prev.internal, depth=True, what=what) as old:
                        both = merge((o, o + n) for o, n, _d in ranges + old.own_ranges())
                        ranges = [(a, b - a, True) for a, b in both]
                self._copy(src, [(o, n, True) for o, n, _d in ranges], compare=True)
            # What the state leaves to the one below it: skipped, never read.
            # Counted when the state ends, in the commit that ends it.
            self.rec.stats["holes"] = self.rec.stats.get("holes", 0) + ly.size - sum(r[1] for r in ranges)
        self.rec.next += 1
        self.rec.done = 0
        self.disk.stage_extra_record(cfmt.RECORD_NAME, cfmt.encode(self.rec))
        if step.snapshot is not None:
            self.disk.create_snapshot(step.snapshot)        # commits the record with it
        else:
            self.disk.flush()

    # ------------------------------------------------------------ bytes

    def _copy(self, src: Export, ranges: list[tuple[int, int, bool]], compare: bool):
        rec, disk = self.rec, self.disk
        total = sum(n for _o, n, _d in ranges)
        done_before = sum(min(n, max(0, rec.done - o)) for o, n, _d in ranges)
        step_done = done_before
        report = self._reporter(total)
        report(step_done)
        todo = [(max(o, rec.done), o + n - max(o, rec.done), d) for o, n, d in ranges if o + n > rec.done]
        for off, ln, buf in _read_ahead(src, todo):
            if buf is None:
                disk.zero(off, ln)
                rec.stats["zeros"] += ln
            else:
                rec.stats["read"] += ln
                if compare:
                    self._write_changed(off, buf)
                else:
                    self._write_data(off, buf)
            step_done += ln
            self._checkpoint(off + ln, ln)
            report(step_done)

    def _write_data(self, off: int, buf: bytes):
        """Write a chunk, all-zero whole blocks as zero extents."""
        bs, disk, st = self.bs, self.disk, self.rec.stats
        # Zero tests are memcmp: a bytearray compares with any buffer in C
        # (memoryview == bytes goes byte by byte, and buf.count(0) scans the
        # whole chunk at ~1 GB/s: a fifth of a conversion's time). Data
        # stops each compare at its first non-zero byte; most chunks of data
        # skip even making the zeros (bytearray(n) is a memset of n bytes).
        if buf and (buf[0] or bytearray(len(buf)) != buf):
            head = (-off) % bs
            a = head
            runs = []       # (start, end, zero) over the chunk, block-aligned inside
            if head:
                runs.append((0, min(head, len(buf)), False))
            mv = memoryview(buf)
            zb = bytearray(bs)
            pos = a
            while pos + bs <= len(buf):
                z = zb == mv[pos:pos + bs]
                if runs and runs[-1][2] == z and runs[-1][1] == pos:
                    runs[-1] = (runs[-1][0], pos + bs, z)
                else:
                    runs.append((pos, pos + bs, z))
                pos += bs
            if pos < len(buf):
                runs.append((pos, len(buf), False))
            for a, b, z in runs:
                if z:
                    disk.zero(off + a, b - a)
                    st["zeros"] += b - a
                else:
                    disk.write(off + a, mv[a:b])
                    st["written"] += b - a
        else:
            disk.zero(off, len(buf))
            st["zeros"] += len(buf)

    def _write_changed(self, off: int, buf: bytes):
        """Write only the blocks of a chunk that differ from the disk's."""
        bs = self.bs
        have = self.disk.read(off, len(buf))
        if have == buf:
            self.rec.stats["skipped"] += len(buf)
            return
        # Block compares as bytearray vs buffer (memcmp), not memoryview vs
        # memoryview (byte by byte, slowest on the equal blocks that
        # internal snapshots mostly share).
        mv, hv = memoryview(buf), memoryview(have)
        ba = buf if isinstance(buf, bytearray) else bytearray(buf)
        runs: list[list[int]] = []
        pos = 0
        while pos < len(buf):
            end = min(len(buf), pos + bs - (off + pos) % bs)
            if ba[pos:end] != hv[pos:end]:
                if runs and runs[-1][1] == pos:
                    runs[-1][1] = end
                else:
                    runs.append([pos, end])
            else:
                self.rec.stats["skipped"] += end - pos
            pos = end
        for a, b in runs:
            self._write_data(off + a, bytes(mv[a:b]))

    def _checkpoint(self, done: int, n: int):
        self._since_checkpoint += n
        if self._since_checkpoint >= CHECKPOINT_BYTES:
            self._since_checkpoint = 0
            self.rec.done = done
            self.disk.stage_extra_record(cfmt.RECORD_NAME, cfmt.encode(self.rec))
            self.disk.flush()

    def _reporter(self, total: int):
        if self.progress is None:
            return lambda done: None
        label = f"{PROGRESS_PHASE} {self.rec.next + 1}/{len(self.rec.steps)}"
        return lambda done: self.progress(label, done, max(total, 1))


def _read_ahead(src: Export, ranges: list[tuple[int, int, bool]]):
    """(offset, length, bytes or None for a zero range), in offset order.

    A thread reads ahead of the writer: libnbd releases the GIL while it
    waits on qemu-nbd, so reading overlaps the engine's hashing and writing.
    """
    q: queue.Queue = queue.Queue(READ_AHEAD)
    stop = threading.Event()

    def reader():
        try:
            for off, ln, data in ranges:
                if not data:
                    q.put((off, ln, None))
                    continue
                end = off + ln
                while off < end and not stop.is_set():
                    n = min(CHUNK_BYTES, end - off)
                    q.put((off, n, src.pread(n, off)))
                    off += n
            q.put(None)
        except BaseException as e:      # handed to the writer, raised there
            q.put(e)

    t = threading.Thread(target=reader, name="vdisk-convert-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


