"""Recent one-block writes, held in memory until the maps need them.

Issue 13's profile: a 4 KiB overwrite spent most of its time changing the
VBA -> PBA and csum trees one entry at a time (a split of the VBA extent,
the remap, the joins, the csum insert: four to six B+tree descents), work
that nothing needs before the next commit except reads of that very block.
So a one-block write records ``vba -> (pba, checksum)`` in a dict, and the
trees take the whole batch at once, in VBA order, when something needs
them (:meth:`RecentWrites.settle`): the checksums in one ``insert_sorted``,
the VBA map in runs, the released PBAs freed as before.

A one-block write of the running point that needs a new VBA (the first
write of a block after a snapshot) defers its LBA side too: ``lba -> vba``
goes to a second table, and the running point's LBA tree takes the batch
at once (:meth:`ExtentMap.assign_blocks`). Issue 13's profile after a
snapshot: the punch and map of each such write, with their joins, made a
write cost 1.8x one that keeps its VBA.

Nothing of the crash contract moves: every commit settles first, inside the
same ``changing()`` guard, so a commit holds exactly what it held before.
What reads the trees must settle first, and the disk's lock does that for
every holder (``_settled``) but the paths that look the tables up
themselves: the one-block read and write, and the general read path, the
multi-block write and the unmap, which settle when a block they touch is in
a table. Snapshots, clones and the anchor's line never see the tables: their
trees are not the running point's, and every change of the running point's
tree record (snapshot, revert, conversion) holds the settled lock.

A VBA is in the table only while the running point (or an online
conversion's anchor) owns it: it was written after the last commit, so
after every snapshot. Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import contextlib


class RecentWrites:
    """The table of recent one-block writes, mixed into :class:`vdisk.disk.Disk`."""

    # vba -> (pba, checksum) of one-block writes not yet in the VBA and csum trees.
    _recent: dict
    # lba -> vba of the running point's one-block writes not yet in its LBA tree.
    _recent_lba: dict

    @contextlib.contextmanager
    def _settled(self):
        """The disk's lock, with the VBA and csum trees holding every write."""
        with self._lock:
            if self._recent or self._recent_lba:
                self._check_open()
                with self.changing(logged=True):
                    self.settle()
            yield

    def settle(self) -> None:
        """Move the recent writes into the LBA, VBA and csum trees (the caller
        holds the lock inside ``changing()``: a failure half-way stops the disk)."""
        if self._recent_lba:
            items = sorted(self._recent_lba.items())
            self._recent_lba = {}
            self._lba.assign_blocks(items)
        recent = self._recent
        if not recent:
            return
        items = sorted(recent.items())
        # Cleared first: entries are moved, and a failure stops the disk anyway.
        self._recent = {}
        release = self.alloc.release
        for pba in self._vba.assign_blocks([(vba, pba) for vba, (pba, _s) in items], runs_only=True):
            release(pba, 1)
        self._csum.insert_sorted([(vba, s) for vba, (_p, s) in items])

    def _lba_recent_in(self, lba_map, b0: int, n: int) -> bool:
        """Whether a block of ``lba_map``'s [b0, b0+n) is in the LBA table."""
        table = self._recent_lba
        if not table or lba_map is not self._lba:
            return False
        if n == 1:
            return b0 in table
        if n <= len(table):
            return any(b in table for b in range(b0, b0 + n))
        return any(b0 <= b < b0 + n for b in table)

    def _recent_in(self, pieces) -> bool:
        """Whether any VBA of ``(lba, vba, count)`` pieces is a recent write."""
        recent = self._recent
        if len(recent) <= 64:
            # A few recent writes and a long read: look up the writes.
            return any(vba <= v < vba + n for v in recent for _s, vba, n in pieces)
        for _s, vba, n in pieces:
            if n == 1:
                if vba in recent:
                    return True
            elif any(v in recent for v in range(vba, vba + n)):
                return True
        return False
