"""An in-memory data store for tests: the PBA space as a dict of pages.

It keeps the :class:`vdisk.datastore.DataStore` contract as a sparse file
does (reads past the end are short, punched pages are holes that
``seek_data`` skips, punching keeps the size), and records what a test may
want to check: how many syncs there were, and the state the last sync made
durable, so :meth:`MemoryDataStore.crash` can show what a power cut would
leave. ``fail`` injects errors: ``{"sync": errno.EIO}`` makes the next sync
raise, once.
"""

from __future__ import annotations

import errno
import os

PAGE = 4096


class MemoryDataStore:
    """The PBA space in memory; cheap to build, crash and reopen in tests."""

    def __init__(self, pages: dict[int, bytes] | None = None, end: int = 0):
        self._pages: dict[int, bytearray] = {i: bytearray(p) for i, p in (pages or {}).items()}
        self._end = end
        self._durable: tuple[dict[int, bytes], int] = ({i: bytes(p) for i, p in self._pages.items()}, end)
        self.syncs = 0
        self.fail: dict[str, int] = {}
        self.closed = False

    def _check(self, op: str):
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        err = self.fail.pop(op, None)
        if err is not None:
            raise OSError(err, os.strerror(err))

    def readinto(self, buf: memoryview, offset: int) -> int:
        self._check("read")
        n = max(0, min(len(buf), self._end - offset))
        pos = 0
        while pos < n:
            page, within = divmod(offset + pos, PAGE)
            take = min(PAGE - within, n - pos)
            data = self._pages.get(page)
            buf[pos:pos + take] = data[within:within + take] if data is not None else bytes(take)
            pos += take
        return n

    def read(self, length: int, offset: int) -> bytes:
        buf = bytearray(max(0, min(length, self._end - offset)))
        self.readinto(memoryview(buf), offset)
        return bytes(buf)

    def read_many_into(self, ranges, views):
        got = [self.readinto(view, offset) for (_length, offset), view in zip(ranges, views)]
        return lambda: got

    def write(self, data: memoryview, offset: int) -> None:
        self._check("write")
        data = memoryview(data).cast("B")
        pos = 0
        while pos < len(data):
            page, within = divmod(offset + pos, PAGE)
            take = min(PAGE - within, len(data) - pos)
            self._pages.setdefault(page, bytearray(PAGE))[within:within + take] = data[pos:pos + take]
            pos += take
        self._end = max(self._end, offset + len(data))

    def start_writeback(self, offset: int, length: int) -> None:
        self._check("start_writeback")

    def sync(self) -> None:
        self._check("sync")
        self.syncs += 1
        self._durable = ({i: bytes(p) for i, p in self._pages.items()}, self._end)

    def punch(self, offset: int, length: int) -> bool:
        self._check("punch")
        end = min(offset + length, self._end)
        pos = offset
        while pos < end:
            page, within = divmod(pos, PAGE)
            take = min(PAGE - within, end - pos)
            if take == PAGE:
                self._pages.pop(page, None)
            elif page in self._pages:
                self._pages[page][within:within + take] = bytes(take)
            pos += take
        return True

    def seek_data(self, offset: int) -> int | None:
        self._check("seek")
        first = offset // PAGE
        pages = [p for p in self._pages if p >= first]
        if not pages or offset >= self._end:
            return None
        return max(offset, min(pages) * PAGE)

    def seek_hole(self, offset: int) -> int:
        self._check("seek")
        page = offset // PAGE
        if page not in self._pages:
            return min(offset, self._end)
        while page in self._pages:
            page += 1
        return min(page * PAGE, self._end)

    def size(self) -> int:
        return self._end

    def allocated_bytes(self) -> int:
        return len(self._pages) * PAGE

    def close(self) -> None:
        self.closed = True

    def reopen(self) -> "MemoryDataStore":
        """The same space, as a new store (after close, as after a clean stop)."""
        return MemoryDataStore({i: bytes(p) for i, p in self._pages.items()}, self._end)

    def crash(self) -> "MemoryDataStore":
        """What a power cut now would leave: the state of the last sync."""
        pages, end = self._durable
        return MemoryDataStore(pages, end)
