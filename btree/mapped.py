"""Pages of LMDB's map that this process touched, dropped from its resident set.

LMDB reads through a shared read-only mapping of data.mdb. Every node the
forest loads faults its page into the process; the forest keeps the decoded
node, so the mapped copy is never looked at again, yet it counts in the
process's RSS until the kernel needs the memory. On a 4 GiB disk that was
143 MiB of the serving process's 442 (docs/PERFORMANCE.md, issue 13).

``madvise(MADV_DONTNEED)`` on a shared file mapping only unmaps the pages from
this process: the page cache keeps them, and the next access faults them in
again from there (a minor fault). No data can be lost by it; LMDB is
opened without MDB_WRITEMAP, so the map is never written through.

Linux only; elsewhere, or if the mapping cannot be found, nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4

try:
    # The process's own symbols, libc's among them: find_library would run
    # ldconfig at import (15-25 ms of every CLI command).
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    if _libc is not None:
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
except (OSError, AttributeError):
    _libc = None


def mappings(path: str) -> list[tuple[int, int]]:
    """The address ranges of this process's mappings of the file ``path``,
    matched by device and inode (the name in /proc may differ: symlinks)."""
    try:
        st = os.stat(path)
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    want_dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    out = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] != str(st.st_ino) or parts[3] != want_dev:
            continue
        start, end = parts[0].split("-")
        out.append((int(start, 16), int(end, 16)))
    return out


def drop_resident(ranges: list[tuple[int, int]]) -> bool:
    """Unmap the pages of ``ranges`` from this process (they stay cached).
    False if the kernel refused (the mapping moved or went): look it up again."""
    if _libc is None:
        return True
    for start, end in ranges:
        if _libc.madvise(start, end - start, _MADV_DONTNEED) != 0:
            return False
    return True
