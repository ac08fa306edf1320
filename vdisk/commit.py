"""Commits and failures: the durability contract of docs/ARCHITECTURE.md.

A commit makes the data durable (the data store's sync), then commits every
metadata change at once, then gives long free runs back to the file system.
Any failure on that way, or a change to the maps that stops half-way, stops
the disk: no later flush may report success, because writes acknowledged
before it may be gone. Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import errno
import logging

from vdisk.errors import Cancelled, DiskFailed, InvalidArgument, NoSpace, StorageError

from . import format as fmt

log = logging.getLogger("vdisk")

# Free runs shorter than this stay in the data file for reuse (see _punch_free_runs).
PUNCH_MIN_BYTES = 64 << 10


class Commits:
    """Commit and failure handling, mixed into :class:`vdisk.disk.Disk`."""

    def _check_open(self):
        if self._closed:
            raise InvalidArgument("disk is closed")
        if self._failed is not None:
            raise DiskFailed(self.location, self._failed)

    def _stop(self, e: BaseException) -> BaseException:
        """Stop the disk after ``e`` left unflushed writes lost or half-applied.

        The durability contract (docs/ARCHITECTURE.md): once a write-back or
        a commit failed, or a change to the maps stopped half-way, no later
        flush may succeed, because writes acknowledged before it may be gone
        (Linux drops dirty pages whose write-back failed, so a retried
        fdatasync would succeed over the hole). Every later request raises
        DiskFailed until the disk is reopened, which finds the last
        successful flush. Returns the exception to raise now.
        """
        if isinstance(e, OSError):
            what = f"I/O error on {self.location}: {e.strerror or e}"
            e = (NoSpace(f"no space left where {self.location} is stored")
                 if e.errno == errno.ENOSPC else StorageError(what))
        if self._failed is not None or self.readonly:
            return e
        self._failed = str(e) or type(e).__name__
        if self._log_holds_all:
            # Closing, with every write in the redo log (vdisk/journal.py).
            return e
        log.error("disk %s stopped: %s; writes since the last flush may be lost; reopen it",
                  self.location, self._failed)
        if isinstance(e, NoSpace):
            return NoSpace(f"{e}; writes since the last successful flush are lost, the disk is "
                           f"consistent: free space, then reopen it")
        return e

    def changing(self, logged: bool = False) -> "_Changing":
        """Wrap a change to the in-memory maps: if it fails half-way, stop the disk.

        Changes are not undone one by one; instead, a half-done change can
        never be committed (see _stop), and the last commit stays the truth.
        ``logged``: the change is a write the redo log records (or follows
        from them, as settling does); any other makes the next flush a full
        commit (vdisk/journal.py).
        """
        return _Changing(self, logged)

    def flush(self) -> None:
        """Make every acknowledged write durable; after a failure, never succeeds."""
        with self._lock:
            self._check_open()
            if self.readonly:
                return
            if not self._flush_by_log():
                self._commit()

    def checkpoint(self) -> None:
        """Commit every change in full: a flush, after which the committed
        metadata alone holds every write (a flush through the redo log leaves
        that to the next full commit, vdisk/journal.py), the PBAs released
        are free again, and the log starts afresh."""
        with self._lock:
            self._check_open()
            if self.readonly:
                return
            self._commit()

    def _commit(self):
        """fdatasync the data, then commit every metadata change at once.

        Any failure stops the disk (see _stop): a failed fdatasync has lost
        the dirty pages it could not write, and a failed metadata commit
        leaves in-memory frees that must never be used.
        """
        self._blocks_since_commit = 0
        with self.changing(logged=True):
            self.settle()
            try:
                self._data.sync()
            except OSError as e:
                raise StorageError(f"writing back the data of {self.location} failed: {e.strerror or e}") \
                    if e.errno != errno.ENOSPC else e
            self._next_epoch()
            freed = self.alloc.prepare_commit()
            self.state.pba_end = self.alloc.end
            self.forest.meta_put(b"disk/state", fmt.encode_state(self.state))
            self._stage_anchor()
            self.forest.commit()
        self._punch_free_runs(freed)

    def _punch_free_runs(self, freed: list[tuple[int, int]]):
        """Give the file system back free runs of at least PUNCH_MIN_BYTES.

        ``freed`` is what prepare_commit returned: the free extents, as the
        commit left them, that hold blocks this commit freed. Each punch
        costs a journal transaction (and a device discard on a file system
        mounted with ``discard``): 250-400 us for one 4 KiB block here,
        which capped random overwrites at ~3,000/s when every freed block
        was punched. Scattered single blocks instead stay in the file as
        free space the allocator hands out again; a freed block that joins
        free neighbours into a long enough run is punched with them.
        """
        bs = self.block_size
        min_blocks = max(1, PUNCH_MIN_BYTES // bs)
        for pba, count in freed:
            if count >= min_blocks:
                self._data.punch(pba * bs, count * bs)

    def sync_data(self):
        """fdatasync the data file without taking the lock.

        Most of a commit's time can be writeback of recent writes; done first,
        outside the lock, the commit proper (which must sync again) finds
        little left to write and holds the lock briefly. A failure stops
        the disk like a failed commit: the pages it could not write are gone.
        """
        try:
            self._data.sync()
        except OSError as e:
            with self._lock:
                err = self._stop(StorageError(f"writing back the data of {self.location} failed: {e.strerror or e}")
                                 if e.errno != errno.ENOSPC else e)
            raise err from None


class _Changing:
    """The context manager of :meth:`Commits.changing`.

    A plain object, not a generator: every write enters it twice, and
    issue 13's profile of 4 KiB writes had contextlib's machinery at 4 us of
    a write. It keeps no state between enter and exit, so nesting is fine.
    """

    __slots__ = ("disk", "logged")

    def __init__(self, disk: Commits, logged: bool):
        self.disk = disk
        self.logged = logged

    def __enter__(self):
        if not self.logged:
            self.disk._unlogged = True

    def __exit__(self, kind, e, tb):
        if kind is None or issubclass(kind, Cancelled):
            return False
        err = self.disk._stop(e)
        if err is e:
            return False
        raise err from None
