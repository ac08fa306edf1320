"""A persistent copy-on-write B+tree library that knows nothing of disks.

- :mod:`.format` - the on-disk encoding of nodes and records (versioned)
- :mod:`.store` - where encoded nodes live: the interface and LMDB;
  :mod:`.store_memory` - its in-memory twin for tests
- :mod:`.forest` - :class:`Forest`: named trees sharing nodes, the node cache,
  counters, tree records and the commit
- :mod:`.tree` - :class:`BTree` and the seq rule; its reads in :mod:`.reads`,
  its writes in :mod:`.writes` (:mod:`.node`: the decoded node)
- :mod:`.check` - the structural checker
"""

from .check import Problem, TreeCheck, check_forest, check_tree
from .format import Layout
from .store import LmdbNodeStore, NodeStore
from .store_memory import MemoryNodeStore
from .forest import Forest
from .tree import BTree

__all__ = ["BTree", "Forest", "Layout", "LmdbNodeStore", "MemoryNodeStore", "NodeStore",
           "Problem", "TreeCheck", "check_forest", "check_tree"]
