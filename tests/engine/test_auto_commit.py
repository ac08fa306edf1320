"""The automatic commit inside writes: a block count and a dirty-node budget (issue 13)."""

from __future__ import annotations

import random

import vdisk.disk as engine
from vdisk import Disk

from .util import pattern

BS = 4096


def test_the_dirty_node_budget_commits_before_the_block_count(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 1 << 30)
    monkeypatch.setattr(engine, "AUTO_COMMIT_DIRTY_NODES", 40)
    path = str(tmp_path / "d")
    rng = random.Random(5)
    with Disk.create(path, 64 << 20) as d:
        commits = []
        real = d.forest.commit
        monkeypatch.setattr(d.forest, "commit", lambda: commits.append(d.forest.dirty_nodes) or real())
        most = 0
        for i in range(4000):
            d.write(rng.randrange(16384) * BS, pattern(i, BS))
            most = max(most, d.forest.dirty_nodes)
        assert commits, "the node budget never committed"
        assert most < 40
        assert all(n >= 40 for n in commits)


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
