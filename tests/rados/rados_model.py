"""A deterministic sequence of node-store commits and the state each leaves.

Commit k puts ~40 nodes in shard 0 and a few in shard 2, deletes what the
previous commit put and this one does not, and changes meta records, so a
state that mixes two commits is visible in nodes and records alike. Shared
by the crash child (which makes the commits) and the tests (which check).
"""

from __future__ import annotations

SHARD2 = 2 << 16


def batch(k: int):
    base = (k % 5) * 20
    ids = list(range(base, base + 40)) + [SHARD2 + (k % 3), SHARD2 + 7]
    puts = {i: f"commit {k} node {i} ".encode() * (3 + i % 7) for i in ids}
    meta = {b"k": str(k).encode(), b"m/%d" % (k % 4): str(k).encode(), b"m/%d" % ((k + 2) % 4): None}
    return puts, meta


def deletes(k: int) -> list[int]:
    if k <= 1:
        return []
    return sorted(set(batch(k - 1)[0]) - set(batch(k)[0]))


def state(k: int):
    """(nodes, meta) after commits 1..k."""
    nodes: dict[int, bytes] = {}
    meta: dict[bytes, bytes] = {}
    for j in range(1, k + 1):
        puts, m = batch(j)
        for i in deletes(j):
            nodes.pop(i, None)
        nodes.update(puts)
        for key, v in m.items():
            if v is None:
                meta.pop(key, None)
            else:
                meta[key] = v
    return nodes, meta


def stored(store):
    """(nodes, meta) as a store holds them."""
    nodes = {i: store.load(i) for i in store.node_ids()}
    return nodes, dict(store.meta_items(b""))
