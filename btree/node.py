"""The decoded node, as the forest caches it and the tree code changes it."""

from __future__ import annotations

from . import format as fmt
from .format import Layout


class Node:
    """A decoded node. ``vals`` holds values (leaf) or child node ids (inner).

    A leaf keeps each u64 field in an array('Q') and each bytes field in a
    list; an inner node keeps lists. Code that changes a node keeps those
    types (slices and copies of a sequence have its type), because encoding
    relies on them (see :func:`leaf_fields`).

    ``packed_vals`` is None or, for a leaf with bytes values, those values
    joined: a bytearray kept in step with ``vals`` by the single-entry
    changes, so that a commit copies it instead of gathering every value
    object of the leaf again (most of a commit's cost when the values are
    scattered in memory). Every other change of ``vals`` sets it to None;
    a commit writes packed_vals, so code that changes ``vals`` without
    doing either would write stale values (tests/btree/test_in_place.py and
    the state machines check the two agree after every step).
    """

    __slots__ = ("id", "seq", "leaf", "keys", "vals", "layout", "packed_vals")

    def __init__(self, node_id: int, seq: int, leaf: bool, keys: list, vals: list, layout: Layout,
                 packed_vals: bytearray | None = None):
        self.id = node_id
        self.seq = seq
        self.leaf = leaf
        self.keys = keys
        self.vals = vals
        self.layout = layout
        self.packed_vals = packed_vals

    def __repr__(self):
        kind = "leaf" if self.leaf else "inner"
        return f"<{kind} {self.id} seq={self.seq} n={len(self.keys)}>"


def leaf_fields(layout: Layout):
    """The constructors of a leaf's key and value sequences for ``layout``."""
    return (fmt.u64_array if layout.key_type[0] == fmt.T_U64 else list,
            fmt.u64_array if layout.value_type[0] == fmt.T_U64 else list)
