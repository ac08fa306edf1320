"""lazyfs's model of file data: dirty pages over a backing file, and fault rules.

A :class:`File` is one regular file of the backing directory plus the pages
written to it since its last fsync, kept whole (4 KiB, zeros past the
file's size). Reads overlay them on the backing file; ``sync`` writes them
there; a power cut (``cut``) writes back a random subset and forgets the
rest. Used by lazyfs_server.py, under its lock.
"""

from __future__ import annotations

import errno
import fnmatch
import os

PAGE = 4096
ZERO_PAGE = bytes(PAGE)
IOV_BATCH = 512        # pages per pwritev, below IOV_MAX (1024)
ACTIONS = {"eio": errno.EIO, "enospc": errno.ENOSPC, "short": None, "cut": errno.EIO}
OPS = ("write", "fsync", "read", "create", "fsyncdir")


class Rule:
    """A fault: on matching ``op`` on a path matching ``path`` (fnmatch, relative
    to the mount), after ``skip`` matches, fire every ``every``-th time, at
    most ``count`` times (0: no limit)."""

    def __init__(self, rid, op, path, action, skip=0, every=1, count=1, drop=True):
        if op not in OPS or action not in ACTIONS:
            raise ValueError(f"bad rule {op}/{action}")
        self.id, self.op, self.path, self.action = rid, op, path, action
        self.skip, self.every, self.count, self.drop = skip, max(1, every), count, drop
        self.seen = 0
        self.fired = 0

    def matches(self, op, path) -> bool:
        if op != self.op or not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.count and self.fired >= self.count:
            return False
        self.seen += 1
        n = self.seen - self.skip
        if n <= 0 or n % self.every:
            return False
        self.fired += 1
        return True

    def as_dict(self):
        return {k: getattr(self, k) for k in ("id", "op", "path", "action", "skip", "every",
                                              "count", "seen", "fired")}


class File:
    """What this process knows of one regular file beyond BACKING."""

    __slots__ = ("fd", "size", "dirty")

    def __init__(self, fd):
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.dirty: dict[int, bytes | bytearray] = {}   # page -> whole page (zeros past size)

    def base(self, page: int) -> bytearray:
        data = os.pread(self.fd, PAGE, page * PAGE)
        return bytearray(data.ljust(PAGE, b"\0"))

    def write(self, off: int, buf):
        mv = memoryview(buf)
        end = off + len(mv)
        pos = off
        while pos < end:
            i = pos // PAGE
            po = pos - i * PAGE
            n = min(PAGE - po, end - pos)
            page = self.dirty.get(i)
            if n == PAGE:
                self.dirty[i] = bytes(mv[pos - off:pos - off + n])
            else:
                if page is None:
                    page = self.base(i)
                elif type(page) is bytes:
                    page = bytearray(page)
                page[po:po + n] = mv[pos - off:pos - off + n]
                self.dirty[i] = page
            pos += n
        self.size = max(self.size, end)

    def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        out = bytearray()
        pos = off
        while pos < end:
            i = pos // PAGE
            page = self.dirty.get(i)
            if page is not None:
                po = pos - i * PAGE
                n = min(PAGE - po, end - pos)
                out += page[po:po + n]
                pos += n
                continue
            j = i + 1
            while j * PAGE < end and j not in self.dirty:
                j += 1
            stop = min(j * PAGE, end)
            data = os.pread(self.fd, stop - pos, pos)
            out += data
            if len(data) < stop - pos:
                out += bytes(stop - pos - len(data))
            pos = stop
        return bytes(out)

    def truncate(self, size: int):
        if size < self.size:
            for i in [i for i in self.dirty if i * PAGE >= size]:
                del self.dirty[i]
            i, po = divmod(size, PAGE)
            if po and i in self.dirty:
                page = bytearray(self.dirty[i])
                page[po:] = bytes(PAGE - po)
                self.dirty[i] = page
            # A shrink is made durable at once (a simplification: nothing the
            # engine or LMDB does depends on losing one).
            if os.fstat(self.fd).st_size > size:
                os.ftruncate(self.fd, size)
        self.size = size

    def zero(self, off: int, length: int):
        end = min(off + length, self.size)
        pos = off
        while pos < end:
            i = pos // PAGE
            if pos == i * PAGE and end - pos >= PAGE:
                self.dirty[i] = ZERO_PAGE
                pos += PAGE
            else:
                n = min(PAGE - (pos - i * PAGE), end - pos)
                self.write(pos, bytes(n))
                pos += n

    def write_back(self, pages):
        """Write the given dirty pages to BACKING, joined into runs."""
        run: list[int] = []

        def put():
            start = run[0] * PAGE
            stop = min((run[-1] + 1) * PAGE, self.size)
            if stop > start:
                bufs = [self.dirty[i] for i in run]
                total = sum(len(b) for b in bufs)
                if total > stop - start:
                    bufs[-1] = bufs[-1][:len(bufs[-1]) - (total - (stop - start))]
                os.pwritev(self.fd, bufs, start)
        for i in sorted(pages):
            if run and (i != run[-1] + 1 or len(run) >= IOV_BATCH):
                put()
                run = []
            run.append(i)
        if run:
            put()

    def sync(self):
        self.write_back(list(self.dirty))
        self.dirty.clear()
        if os.fstat(self.fd).st_size < self.size:
            os.ftruncate(self.fd, self.size)


    def cut(self, rng, keep: float, grow: float) -> tuple[int, int, bool]:
        """Power cut: write back each dirty page with probability ``keep``;
        with probability ``grow`` the file's size reaches the disk without
        (all) its data, which then reads as zeros. Returns (kept, dropped, grown)."""
        pages = sorted(self.dirty)
        chosen = [i for i in pages if rng.random() < keep]
        self.write_back(chosen)
        grown = bool(pages) and rng.random() < grow and os.fstat(self.fd).st_size < self.size
        if grown:
            os.ftruncate(self.fd, self.size)
        self.dirty.clear()
        return len(chosen), len(pages) - len(chosen), grown
