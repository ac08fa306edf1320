"""The Disk users get: the engine plus the snapshot lifecycle.

:class:`vdisk.disk.Disk` is the engine (maps, data, commits, O(1) snapshot
creation and renaming) and knows nothing of how snapshots are sized, deleted
or reverted to; those algorithms live here, in snapshots/, and use only the
engine's interface for them (locks, records, ``changing``, ``maintenance``,
``run_in_batches``, ``forget_vbas``, ``clone_running_point``, ``view``).
This class puts both together behind the API the README documents;
``vdisk.Disk`` is this class.
"""

from __future__ import annotations

import threading

from vdisk.disk import Disk as Engine
from vdisk.names import check_snapshot_lookup

from . import delete, usage


class Disk(Engine):
    """A virtual disk container. Use :meth:`create` or :meth:`open`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_thread: threading.Thread | None = None
        if not self.readonly:
            self._resume_in_background()

    def _resume_in_background(self):
        """Finish a snapshot deletion a crash interrupted, beside the caller's I/O.

        In a thread, so that opening stays fast however much the deletion
        has left to do; close() stops it at a batch boundary, and the
        pending record makes the next open carry on.
        """
        try:
            pending = delete.pending_work(self)
        except BaseException:
            self.close()
            raise
        if pending:
            self._resume_thread = threading.Thread(target=delete.resume_on_open, args=(self,),
                                                   name="vdisk-resume", daemon=True)
            self._resume_thread.start()

    def wait_maintenance(self, timeout: float | None = None) -> bool:
        """Wait for the work an open resumed in the background; False on timeout."""
        t = self._resume_thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def exclusive_blocks(self, name: str) -> int:
        return usage.exclusive_blocks(self, name)

    def snapshots(self, exclusive: bool = True):
        """Snapshots oldest first, with the bytes each one alone holds."""
        return super().snapshots(exclusive)

    def revert(self, name: str) -> None:
        """Make the running point read exactly as snapshot ``name``."""
        check_snapshot_lookup(name)
        self.check_writable()
        with self.lifecycle_lock, self.lock:
            self.check_writable()           # again under the lock: it may have stopped
            self.check_not_converting("revert")
            rec = self.snapshot_record(name)
            with self.changing():
                usage.drop_running_point_exclusive(self)
                self.clone_running_point(rec)
        # The running point left its old base, which may have been waiting
        # for that to be deleted.
        delete.reap_deferred(self)

    def delete_snapshot(self, name: str, buffer_bytes: int | None = None, progress=None) -> int:
        """Delete a snapshot, returning the space only it held; returns blocks freed.

        Runs in short batches (see :mod:`vdisk.snapshots.delete`), so other
        threads' reads and writes continue meanwhile. ``buffer_bytes`` bounds
        the memory of the sort buffer (default 64 MiB); past it, sorted runs
        spill to files in the disk directory. ``progress(phase, done, total)``,
        if given, is called under the lock as the batches advance (phases
        "scan": nodes read, and "sweep": runs of blocks freed); it must be
        quick.
        """
        check_snapshot_lookup(name)
        self.check_writable()
        self.check_not_converting("delete a snapshot")
        return delete.delete_snapshot(self, name, buffer_bytes or delete.DEFAULT_LIMIT_BYTES, progress=progress)
