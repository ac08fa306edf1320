"""Recent one-block writes, held in memory until the maps need them.

Issue 13's profile: a 4 KiB overwrite spent most of its time changing the
VBA -> PBA and csum trees one entry at a time (a split of the VBA extent,
the remap, the joins, the csum insert: four to six B+tree descents), work
that nothing needs before the next commit except reads of that very block.
So a one-block write records ``vba -> (pba, checksum)`` in a dict, and the
trees take the whole batch at once, in VBA order, when something needs
them (:meth:`RecentWrites.settle`): the checksums in one ``insert_sorted``,
the VBA map in runs, the released PBAs freed as before.

Nothing of the crash contract moves: every commit settles first, inside the
same ``changing()`` guard, so a commit holds exactly what it held before.
The LBA trees are never deferred (a write that needs a new VBA maps it in
the running point's tree at once), so every reader of LBA maps (extents,
block status, diff, snapshots) is exact without settling; what reads the
VBA or csum tree must settle first, and the disk's lock does that for every
holder but the two fast paths (one-block reads and writes) and the general
read path, which settles when a block it reads is recent.

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

    @contextlib.contextmanager
    def _settled(self):
        """The disk's lock, with the VBA and csum trees holding every write."""
        with self._lock:
            if self._recent:
                self._check_open()
                with self.changing(logged=True):
                    self.settle()
            yield

    def settle(self) -> None:
        """Move the recent writes into the VBA and csum trees (the caller
        holds the lock inside ``changing()``: a failure half-way stops the disk)."""
        recent = self._recent
        if not recent:
            return
        items = sorted(recent.items())
        # Cleared first: entries are moved, and a failure stops the disk anyway.
        self._recent = {}
        vba_map, release = self._vba, self.alloc.release
        run_v = run_p = None
        run_n = 0
        for vba, (pba, _sum) in items:
            if run_n and vba == run_v + run_n and pba == run_p + run_n:
                run_n += 1
                continue
            if run_n:
                self._remap(vba_map, release, run_v, run_p, run_n)
            run_v, run_p, run_n = vba, pba, 1
        self._remap(vba_map, release, run_v, run_p, run_n)
        self._csum.insert_sorted([(vba, s) for vba, (_p, s) in items])

    @staticmethod
    def _remap(vba_map, release, vba: int, pba: int, n: int):
        if n == 1:
            # The common entry: one rewritten block (see ExtentMap.remap_block).
            old = vba_map.remap_block(vba, pba)
            if old is not None:
                release(old, 1)
                return
        for _v, old, c in vba_map.punch(vba, n):
            release(old, c)
        vba_map.map(vba, pba, n)

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
