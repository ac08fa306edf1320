"""The decoded node, as the forest caches it and the tree code changes it."""

from __future__ import annotations

from . import format as fmt
from .format import Layout
from .packed import PackedBytes


class Node:
    """A decoded node. ``vals`` holds values (leaf) or child node ids (inner).

    A leaf keeps each u64 field in an array('Q'), bytes keys in a list and
    bytes values in a :class:`~.packed.PackedBytes` (the value field as it
    is encoded); an inner node keeps lists. Code that changes a node keeps
    those types (slices and copies of a sequence have its type), because
    encoding relies on them (see :func:`leaf_fields`).
    """

    __slots__ = ("id", "seq", "leaf", "keys", "vals", "layout")

    def __init__(self, node_id: int, seq: int, leaf: bool, keys: list, vals: list, layout: Layout):
        self.id = node_id
        self.seq = seq
        self.leaf = leaf
        self.keys = keys
        self.vals = vals
        self.layout = layout

    def __repr__(self):
        kind = "leaf" if self.leaf else "inner"
        return f"<{kind} {self.id} seq={self.seq} n={len(self.keys)}>"


def leaf_fields(layout: Layout):
    """The constructors of a leaf's key and value sequences for ``layout``."""
    vt, vw = layout.value_type
    return (fmt.u64_array if layout.key_type[0] == fmt.T_U64 else list,
            fmt.u64_array if vt == fmt.T_U64 else (lambda items=(): PackedBytes(vw, items)))
