"""Long maintenance work in short batches beside live I/O: the scheduler, and compact.

Snapshot deletion (:mod:`vdisk.snapshots.delete`) and compact run as
generators of small steps; :meth:`Maintenance.run_in_batches` advances them
under the disk lock a few milliseconds at a time and leaves the lock free in
between, and close() waits for registered work at its next batch boundary.
Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import contextlib
import time

from vdisk.errors import Cancelled

# Batches of maintenance work (Disk.run_in_batches): the pause after a batch
# as a share of the time it held the lock, the shortest pause, and what a
# step yields to have its work committed.
BATCH_IO_SHARE = 0.5
BATCH_MIN_PAUSE = 0.0005
BATCH_COMMIT = object()


class Maintenance:
    """Registered, batched maintenance work, mixed into :class:`vdisk.disk.Disk`."""

    @contextlib.contextmanager
    def maintenance(self):
        """Register long work (deletion, compact) that close() must wait for.

        The work checks :meth:`check_cancelled` at each batch boundary, so
        close() waits at most one batch.
        """
        with self._jobs_done:
            self._check_open()
            if self._closing:
                raise Cancelled(f"disk {self.location} is closing")
            self._jobs += 1
        try:
            yield
        finally:
            with self._jobs_done:
                self._jobs -= 1
                self._jobs_done.notify_all()

    def check_cancelled(self):
        if self._closing:
            raise Cancelled(f"disk {self.location} is closing; the work resumes at the next open")
        self._check_open()

    def compact(self, stall: float = 0.02, progress=None) -> int:
        """Return every free block still in the data file to the file system.

        Single freed blocks are not punched when they are freed (see
        :meth:`_punch_free_runs`); this walks the free map and punches the
        parts of free extents that still hold data (found with SEEK_DATA, so
        holes cost nothing), in batches (:meth:`run_in_batches`) so I/O
        continues meanwhile. Under the lock the free map is exact (blocks
        being written are not in it), so no live block can be punched.
        Returns the bytes punched. ``progress(phase, done, total)``, if
        given, is called under the lock after each extent with the bytes of
        free space looked at so far and the free space there was at the start
        (phase "compact"); it must be quick.
        """
        self.check_writable()
        punched = [0]
        with self.maintenance():
            self.run_in_batches(self._compact_steps(punched, progress), stall)
        return punched[0]

    def _compact_steps(self, punched: list[int], progress=None):
        bs = self.block_size
        cursor = 0
        with self._lock:
            total = self.alloc.free_blocks() * bs
        seen = 0
        while True:
            # The free map may change between batches: look up from a cursor.
            item = next(self.alloc.free.items(cursor), None)
            if item is None:
                return
            pba, count = item
            cursor = pba + count
            punched[0] += self._punch_data_in(pba * bs, count * bs)
            if progress is not None:
                # Frees since the start can make the walk longer than the total.
                seen += count * bs
                progress("compact", min(seen, total), total)
            yield

    def run_in_batches(self, steps, stall: float, before_batch=None):
        """Advance the generator ``steps`` under the lock, ``stall`` seconds at a time.

        For long maintenance work beside live I/O (snapshot deletion,
        compact). Between batches the lock stays free for ``BATCH_IO_SHARE``
        times as long as the batch held it, so waiting I/O gets about a third
        of the time (Python's locks are not fair: released and retaken at
        once, the waiting I/O would starve). A step that yields
        ``BATCH_COMMIT`` has its work committed before the next batch.
        Raises Cancelled at a batch boundary once the disk is closing; a
        step that fails stops the disk (see changing).
        """
        while True:
            commit = False
            with self._settled():
                self.check_cancelled()
                start = time.monotonic()
                with self.changing():
                    if before_batch is not None:
                        before_batch()
                    for step in steps:
                        if step is BATCH_COMMIT:
                            commit = True
                            break
                        if time.monotonic() - start >= stall:
                            break
                    else:
                        return
                held = time.monotonic() - start
            time.sleep(max(BATCH_MIN_PAUSE, held * BATCH_IO_SHARE))
            if commit:
                start = time.monotonic()
                self.sync_data()
                with self._lock:
                    self._check_open()
                    self._commit()
                time.sleep(max(BATCH_MIN_PAUSE, (time.monotonic() - start) * BATCH_IO_SHARE))

    def _punch_data_in(self, offset: int, length: int) -> int:
        """Punch the data (not the holes) of [offset, offset+length) of the data file."""
        end = offset + length
        done = 0
        pos = offset
        while pos < end:
            data = self._data.seek_data(pos)
            if data is None or data >= end:
                break
            hole = min(self._data.seek_hole(data), end)
            self._data.punch(data, hole - data)
            done += hole - data
            pos = hole
        return done
