"""The in-memory node store: the twin of LmdbNodeStore for tests and scratch work.

It keeps the interface's one promise that matters to the tree (see
:class:`vdisk.btree.store.NodeStore`): a commit is atomic, because it
replaces both dicts at once.
"""

from __future__ import annotations


class MemoryNodeStore:
    """A store in a dict; commits are atomic because they are one update."""

    def __init__(self):
        self.readonly = False
        self.nodes: dict[int, bytes] = {}
        self.meta: dict[bytes, bytes] = {}

    def load(self, node_id):
        return self.nodes.get(node_id)

    def meta_get(self, key):
        return self.meta.get(key)

    def meta_items(self, prefix):
        return sorted((k, v) for k, v in self.meta.items() if k.startswith(prefix))

    def commit(self, puts, deletes, meta):
        nodes = dict(self.nodes)
        nodes.update(puts)
        for node_id in deletes:
            nodes.pop(node_id, None)
        new_meta = dict(self.meta)
        for k, v in meta.items():
            if v is None:
                new_meta.pop(k, None)
            else:
                new_meta[k] = v
        self.nodes, self.meta = nodes, new_meta

    def node_ids(self):
        return iter(sorted(self.nodes))

    def last_node_id(self):
        return max(self.nodes, default=None)

    def close(self):
        pass
