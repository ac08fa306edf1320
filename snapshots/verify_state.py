"""What one run of ``vdisk verify`` carries from phase to phase.

The phases (records, walk, cross-checks, data; see :mod:`.verify`) are
functions in their own modules; each reads what earlier phases gathered here
and adds its own. Keeping it in one plain object, rather than in the phases,
lets a later phase hold its runs against every earlier one without the
phases importing each other.
"""

from __future__ import annotations

import os
from array import array

from vdisk import format as fmt
from vdisk.btree import Layout
from vdisk.extents import LEN_BITS, MAX_LEN
from vdisk.names import CSUM_BYTES, CSUM_TREE, FREE_TREE, RUNNING_TREE, VBA_TREE

from .verify_report import Problem, Report

U64_ARRAY = "Q"
# The record of a snapshot deletion in progress, as snapshots/delete.py writes
# it (tests/verify/test_deletion.py holds the two equal). Named here so that
# verify does not import the deletion, and with it the whole engine
# (vdisk.disk), only for this key: the command's start-up pays for imports.
DELETING_KEY = b"disk/deleting"
EXTENT = Layout("u64", "u64")
CSUM = Layout("u64", f"bytes:{CSUM_BYTES}")
CORE_TREES = {RUNNING_TREE: EXTENT, VBA_TREE: EXTENT, CSUM_TREE: CSUM, FREE_TREE: EXTENT}
# B+tree checker kinds after which a tree's entries are not all known.
UNREADABLE = {"corrupt", "missing", "version", "record", "layout"}


class Verification:
    """The inputs of one run, what it has found, and the runs it gathered."""

    def __init__(self, path: str, store, progress, data_store=None, label: str | None = None):
        self.path = path
        self.store = store
        self.data_store = data_store                             # None: the data file at path/data
        self.progress = progress
        self.forest = None                                       # set by the driver, inside the view
        self.report = Report(label or os.path.abspath(path))
        self.problems = self.report.problems
        self.block_size = None
        self.config = self.state = None
        self.log = None                                          # the redo log's epoch (disk/log)
        self.records: dict[str, fmt.SnapshotRecord] = {}
        # The LBA leaves the walk read, (tree label, keys, values): their
        # values (packed VBA and length) also all in one array, which is what
        # the cross-checks merge; ``refs`` lists them one by one when a
        # problem is to be named.
        self.lba_leaves: list[tuple[str, object, object]] = []
        self.ref_packed = array(U64_ARRAY)
        self._refs = None
        self.mapped: list[tuple[int, int, int]] = []             # (vba, end, pba)
        self.pba_packed = array(U64_ARRAY)                       # the same, as packed (pba, length)
        self._mapped_sorted = None
        self.csum_runs: list[tuple[int, int]] = []
        self.free_runs: list[tuple[int, int]] = []
        self.rp_shared: list[tuple[str, int, int, int]] = []     # (label, lba, vba, count)
        self.lba_trees: dict = {}                                # name -> verify_visitors.LbaTree
        self.incomplete: set[str] = set()
        self.suspects: list[tuple[int, int, bytes]] = []         # (vba, pba, checksum) from --data
        self.deletion = None                                     # fmt.DeletionRecord in progress
        self.anchor = None                                       # fmt.AnchorRecord of an online conversion
        self.data_file_blocks: int | None = None                 # whole blocks in the data file
        self.held: list[tuple[int, int]] = []                    # VBA runs the deletion may still hold
        self.seen_overlaps: set = set()

    def problem(self, kind: str, where: str, what: str):
        self.problems.append(Problem(kind, where, what))

    def note(self, text: str):
        self.report.notes.append(text)

    def advance(self, phase, done, total):
        if self.progress is not None:
            self.progress(phase, done, total)

    @property
    def refs(self) -> list[tuple[int, int, str, int]]:
        """Every extent of the LBA leaves read, as ``(vba, end, tree label, lba)``."""
        if self._refs is None:
            self._refs = [(vba, vba + (packed & MAX_LEN), label, k)
                          for label, keys, vals in self.lba_leaves
                          for k, packed in zip(keys, vals) for vba in (packed >> LEN_BITS,)]
        return self._refs

    @property
    def mapped_sorted(self):
        # Only needed once a problem is named or blocks are read, so sorted on demand.
        if self._mapped_sorted is None:
            self._mapped_sorted = sorted(self.mapped)
        return self._mapped_sorted
