"""The store gives back the pages of LMDB's map that its reads faulted in
(btree/mapped.py): the decoded nodes are what the forest keeps, so the mapped
copies only inflated the serving process's RSS (issue 13's memory target)."""

from __future__ import annotations

import os

from vdisk.btree import LmdbNodeStore
from vdisk.btree import store as store_mod

NODE = 4080


def _resident_kib(file: str) -> int:
    """The Rss of this process's mappings of ``file`` (smaps, by inode)."""
    ino = str(os.stat(file).st_ino)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and parts[0][0] != "-" and ":" in parts[3]:
                inside = parts[4] == ino
            elif inside and parts[0] == "Rss:":
                total += int(parts[1])
    return total


def _filled(path, n: int) -> LmdbNodeStore:
    s = LmdbNodeStore(path)
    s.commit({i: bytes([i % 251]) * NODE for i in range(1, n + 1)}, [], {})
    return s


def test_loads_beyond_the_budget_do_not_stay_resident(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "SHED_EVERY_LOADS", 256)
    s = _filled(tmp_path / "m", 3000)
    try:
        file = os.path.join(tmp_path / "m", "data.mdb")
        for i in range(1, 3001):
            assert s.load(i) == bytes([i % 251]) * NODE
        # 3,000 nodes are ~12 MiB of pages; at most a budget's worth stays.
        assert _resident_kib(file) < 256 * 4 + 512, _resident_kib(file)
        # And the pages come back from the page cache when read again.
        assert [s.load(i)[:1] for i in (1, 1500, 3000)] == [b"\x01", bytes([1500 % 251]), bytes([3000 % 251])]
    finally:
        s.close()


def test_shedding_is_what_keeps_them_out(tmp_path, monkeypatch):
    # The same loads with shedding pushed past them: the pages stay mapped,
    # so the first test measures the shedding, not the kernel.
    monkeypatch.setattr(store_mod, "SHED_EVERY_LOADS", 10 ** 9)
    s = _filled(tmp_path / "m", 3000)
    try:
        file = os.path.join(tmp_path / "m", "data.mdb")
        s.shed()
        for i in range(1, 3001):
            s.load(i)
        before = _resident_kib(file)
        assert before > 3000 * 4, before
        s.shed()
        assert _resident_kib(file) < before // 8
    finally:
        s.close()
