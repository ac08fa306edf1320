"""The automatic commit inside writes: a block count and a dirty-node budget (issue 13)."""

from __future__ import annotations

import random

import vdisk.disk as engine
from vdisk import Disk

from .util import pattern

BS = 4096


def _budget(d) -> int:
    """What the memory budget counts: dirty nodes, and recent writes at RECENT_PER_NODE a node."""
    return d.forest.dirty_nodes + len(d._recent) // engine.RECENT_PER_NODE


def test_the_dirty_node_budget_commits_before_the_block_count(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 1 << 30)
    monkeypatch.setattr(engine, "AUTO_COMMIT_DIRTY_NODES", 40)
    path = str(tmp_path / "d")
    rng = random.Random(5)
    with Disk.create(path, 64 << 20) as d:
        commits = []
        real = d._commit
        monkeypatch.setattr(d, "_commit", lambda: commits.append(_budget(d)) or real())
        most = 0
        want = {}
        for i in range(4000):
            lba = rng.randrange(16384)
            d.write(lba * BS, pattern(i, BS))
            want[lba] = i
            most = max(most, _budget(d))
        assert commits, "the node budget never committed"
        assert most < 40
        assert all(n >= 40 for n in commits)
    with Disk.open(path) as d:
        for lba, i in want.items():
            assert d.read(lba * BS, BS) == pattern(i, BS)


def test_recent_writes_alone_reach_the_budget(tmp_path, monkeypatch):
    """Overwrites of blocks with no snapshot change no node until they settle:
    the recent table itself must bound the memory."""
    path = str(tmp_path / "d")
    with Disk.create(path, 64 << 20) as d:
        for i in range(0, 64 << 20, 1 << 20):
            d.write(i, pattern(i, 1 << 20))
        d.flush()
        monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 1 << 30)
        monkeypatch.setattr(engine, "AUTO_COMMIT_DIRTY_NODES", 8)
        commits = []
        real = d._commit
        monkeypatch.setattr(d, "_commit", lambda: commits.append(len(d._recent)) or real())
        rng = random.Random(3)
        for i in range(1000):
            d.write(rng.randrange(16384) * BS, pattern(i, BS))
        assert commits and max(commits) <= 8 * engine.RECENT_PER_NODE


def test_the_block_count_commits_when_few_nodes_change(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 256)
    monkeypatch.setattr(engine, "AUTO_COMMIT_LIGHT_BLOCKS", 256)
    path = str(tmp_path / "d")
    with Disk.create(path, 64 << 20) as d:
        commits = []
        real = d.forest.commit
        monkeypatch.setattr(d.forest, "commit", lambda: commits.append(1) or real())
        for i in range(1024):                       # sequential: a few nodes, many blocks
            d.write(i * BS, pattern(i, BS))
        assert len(commits) == 4
    with Disk.open(path) as d:
        assert d.read(1023 * BS, BS) == pattern(1023, BS)


def test_light_commits_keep_the_64_mib_interval_and_heavy_ones_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "AUTO_COMMIT_LIGHT_BLOCKS", 512)
    monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 2048)
    path = str(tmp_path / "d")
    rng = random.Random(7)
    with Disk.create(path, 64 << 20) as d:
        commits = []
        real = d.forest.commit
        monkeypatch.setattr(d.forest, "commit", lambda: commits.append(d._blocks_since_commit) or real())
        for i in range(64):                         # 1 MiB writes: few nodes for many blocks
            d.write(i * (1 << 20), pattern(i, 1 << 20))
        assert len(commits) == 64 * 256 // 512
        d.flush()
        commits.clear()
        for i in range(2048):                       # scattered 4 KiB writes: many nodes
            d.write(rng.randrange(16384) * BS, pattern(i, BS))
        assert len(commits) == 1
