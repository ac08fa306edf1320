"""A sort buffer for VBA runs that spills to sorted files past a memory bound.

Snapshot deletion collects the VBA runs a snapshot owns alone in whatever
order its LBA tree yields them, and must hand them back sorted by VBA so the
VBA -> PBA tree is swept in one ascending pass. A snapshot of a large disk can
own more runs than fit in memory, so past ``limit_bytes`` the buffer is sorted
and written to a run file; reading merges the files (an external merge sort).

Each run ``(vba, count)`` is kept as one integer ``vba << 24 | count``, the
packing of :mod:`vdisk.extents`, so sorting the integers sorts by VBA. Run
files are raw little-endian u64 arrays. They are scratch: a crash loses them,
and a resumed deletion scans again.
"""

from __future__ import annotations

import array
import heapq
import os
import shutil
import sys
import tempfile
from typing import Iterator

from vdisk.extents import LEN_BITS, MAX_LEN

DEFAULT_LIMIT_BYTES = 64 << 20
# A Python int in a list costs about 8 bytes of pointer plus 32 of object.
BYTES_PER_RUN = 40
READ_CHUNK = 1 << 16            # runs read from a file at a time while merging


class RunBuffer:
    """Collect ``(vba, count)`` runs; iterate them sorted by VBA."""

    def __init__(self, directory: str, limit_bytes: int = DEFAULT_LIMIT_BYTES):
        self.directory = directory
        self.limit_runs = max(1, limit_bytes // BYTES_PER_RUN)
        self._runs: list[int] = []
        self._files: list[str] = []
        self._tmp: str | None = None
        self.total = 0

    def add(self, vba: int, count: int):
        while count:
            n = min(count, MAX_LEN)
            self._runs.append(vba << LEN_BITS | n)
            vba += n
            count -= n
            self.total += 1
        if len(self._runs) >= self.limit_runs:
            self._spill()

    @property
    def spilled_files(self) -> int:
        return len(self._files)

    def _spill(self):
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="delete-runs-", dir=self.directory)
        self._runs.sort()
        path = os.path.join(self._tmp, f"run-{len(self._files)}")
        data = array.array("Q", self._runs)
        if sys.byteorder != "little":
            data.byteswap()
        with open(path, "wb") as f:
            data.tofile(f)
        self._files.append(path)
        self._runs = []

    def sorted_runs(self) -> Iterator[tuple[int, int]]:
        """Every run added, ascending by VBA."""
        self._runs.sort()
        streams = [iter(self._runs)] + [_read_file(p) for p in self._files]
        for packed in heapq.merge(*streams):
            yield packed >> LEN_BITS, packed & MAX_LEN

    def close(self):
        self._runs = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_file(path: str) -> Iterator[int]:
    with open(path, "rb") as f:
        while True:
            chunk = array.array("Q")
            try:
                chunk.fromfile(f, READ_CHUNK)
            except EOFError:
                pass                    # fromfile keeps what it read before EOF
            if sys.byteorder != "little":
                chunk.byteswap()
            yield from chunk
            if len(chunk) < READ_CHUNK:
                return


def remove_stale(directory: str):
    """Drop run files a crashed deletion left behind."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith("delete-runs-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
