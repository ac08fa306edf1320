"""A persistent copy-on-write B+tree library that knows nothing of disks.

- :mod:`.format` - the on-disk encoding of nodes and records (versioned)
- :mod:`.store` - where encoded nodes live (LMDB, or memory for tests)
- :mod:`.tree` - the algorithm: :class:`Forest` of :class:`BTree` sharing nodes
- :mod:`.check` - the structural checker
"""

from .check import Problem, TreeCheck, check_forest, check_tree
from .format import Layout
from .store import LmdbNodeStore, MemoryNodeStore
from .tree import BTree, Forest

__all__ = ["BTree", "Forest", "Layout", "LmdbNodeStore", "MemoryNodeStore",
           "Problem", "TreeCheck", "check_forest", "check_tree"]
