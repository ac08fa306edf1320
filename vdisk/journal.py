"""The redo log: a client's flush costs one sync of the data store.

Issue 13's profile of a flush every 16 writes: a full commit syncs three
times (the data file, then LMDB's pages and its meta page) and writes every
node the writes dirtied, against qcow2's one ``fdatasync``. So between full
commits, a flush appends the records of the writes since the last flush
(vdisk/logformat.py: lba, pba, checksum - what replay needs to redo them) to
a log in the PBA space itself, and syncs the data store once: the data and
the records that map it become durable together. The trees stay in memory
until a full commit (the automatic one of ``_after_work``, a snapshot, close,
or a flush once the log holds LOG_MAX_GROUPS groups), which ends the epoch:
its log blocks are freed with it, and a new head is allocated and named in
``disk/log`` in the same commit.

Why it is safe:

* A record names PBAs that were free in the committed state, and a PBA a
  write releases is handed out again only after the next full commit
  (vdisk/alloc.py), so every block a record names, and every block the
  committed maps name, still holds what was written there: the committed
  state alone stays exact with its data (verify, readers beside the
  writer), and the log only adds to it. The price is space: the blocks
  overwrites and trims release wait for the next commit, which comes
  sooner once they add up (LOG_MAX_RELEASED).
* Groups are chained from the committed head, each naming the next one,
  which was allocated before it was written; each carries the epoch's
  random id, its index and a hash, so the chain ends at the first block
  that is not the next group (never written, torn, of another epoch).
* Flushes run one at a time, so a group of flush k+1 exists only if flush k
  returned: every flush but the last in the chain completed. The last one's
  records are replayed only if all its groups are there and every block
  they leave mapped has its checksum; else that flush never returned and
  is dropped as a whole.
* Replay happens at the next writable open, before anything else; the
  writer then goes on appending to the same epoch (so opening needs no
  commit, and works on a full file system). Each group carries the hash of
  the one before it and a random id of its writer, so a group that a
  dropped flush left behind can never continue the chain written after.

Only writes and zeros of the running point are logged. Any other change (a
snapshot operation, a batch of a deletion, a conversion's anchor, a record
of a layer above) makes the next flush a full commit, as before.
Mixed into :class:`vdisk.disk.Disk`.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import NamedTuple

import blake3

from vdisk.errors import IntegrityError, NoSpace

from . import format as fmt
from . import logformat as lf
from .names import CSUM_BYTES, CSUM_TREE, FREE_TREE, LOG_KEY, RUNNING_TREE, VBA_TREE

log = logging.getLogger("vdisk")

# A full commit instead, once the epoch holds this many groups: bounds the
# log's space and what replay has to redo (at 4 KiB, 16 MiB: ~400,000
# one-block records).
LOG_MAX_GROUPS = 4096

# What the running point's writes change: the redo log redoes these only.
_WRITES_CHANGE = frozenset((RUNNING_TREE, VBA_TREE, CSUM_TREE, FREE_TREE))

# A full commit instead, once unmaps since the last one released this many
# blocks (1 MiB at 4 KiB): trimmed space goes back to the file system only
# with a commit, and a client trims to get it back (on a full file system,
# it is how space comes back).
LOG_MAX_RELEASED = 256
# Tests switch the log off to compare against full commits.
LOG_ENABLED = True


class Journal:
    """The redo log of the running point's writes, mixed into :class:`vdisk.disk.Disk`."""

    _log: lf.LogRecord | None = None
    _log_next = 0               # PBA of the next group
    _log_index = 0              # its index in the epoch
    _log_prev = lf.NO_PREV      # the hash of the group before it
    _log_owned: list            # PBAs the epoch's log holds (head, written groups, the next one)
    _log_stream: list           # records of the writes since the last flush
    _log_released = 0           # blocks unmaps released since the last commit
    _unlogged = True            # a change since the last full commit that the log cannot redo
    _replaying = False
    _log_holds_all = False      # closing: a failed commit loses nothing (see _close_commit)
    _ro_log = None              # a reader's (epoch, _Flush: the last flush it redid)

    def _init_journal(self):
        """Fresh journal state: at open, and each time a reader reloads the maps."""
        self._log_owned = []
        self._log_stream = []
        self._recent = {}
        self._recent_lba = {}
        self._ro_log = None
        self._log_writer = int.from_bytes(os.urandom(8), "little")

    def log_blocks(self) -> list[int]:
        """The PBAs the redo log holds now: the epoch's head, its groups, the next one.

        Neither mapped nor free: an accounting of the PBA space counts them
        as used. Freed by the next full commit.
        """
        return list(self._log_owned)

    # ------------------------------------------------------------ recording

    def _logs(self, line) -> bool:
        """Whether writes to ``line`` are logged: the running point's, with no origin below it."""
        return line.lba is self._lba and line.origin is None and self._anchor is None

    def _log_write(self, line, lba: int, pieces, sums) -> None:
        if not self._logs(line):
            self._unlogged = True
        elif self._log is not None and not self._replaying:
            if len(sums) == 1:
                self._log_stream.append(lf.one(lba, pieces[0][0], sums[0]))
            else:
                self._log_stream.append(lf.blocks(lba, len(sums), pieces, sums))

    def _log_zero(self, line, lba: int, count: int, released: int) -> None:
        """Record an unmap that released ``released`` blocks (they wait for a commit)."""
        if not self._logs(line):
            self._unlogged = True
        elif self._log is not None and not self._replaying:
            self._log_stream.append(lf.zero(lba, count))
            self._log_released += released

    # ------------------------------------------------------------ flushing

    def _flush_by_log(self) -> bool:
        """Make the writes since the last flush durable through the log, if it can.

        False: the caller commits in full instead (something the log cannot
        redo changed, there is no epoch yet, the log is full, or the file
        system has no room for it).
        """
        if (not LOG_ENABLED or self._unlogged or self._log is None
                or self._log_index >= LOG_MAX_GROUPS or self._log_released >= LOG_MAX_RELEASED
                or self.forest.changed_beyond(_WRITES_CHANGE)):
            # (The last: a layer above that changed records or trees directly
            # and flushes to commit them, as a deletion's first step does.)
            return False
        stream = b"".join(self._log_stream)
        bs = self.block_size
        per = lf.payload_bytes(bs)
        chunks = [stream[i:i + per] for i in range(0, len(stream), per)]
        with self.changing(logged=True):
            if chunks:
                written = self._append(chunks)
                if written is None:
                    return False
                try:
                    self._data.sync()
                except OSError:
                    self._unwrite(written)
                    raise
                self._log_stream = []
        if chunks:
            self._reserve_next()
        return True

    def _unwrite(self, written: list[int]) -> None:
        """After a failed sync: make the flush's groups invalid, if the store still takes writes.

        The flush failed, so the disk stops; but its groups may have reached
        the device while some of its data did not, and a replay in the same
        boot could find that data still in the page cache and believe it
        landed. Zeroing its first group ends the chain before it.
        """
        try:
            self._data.write(memoryview(bytes(self.block_size)), written[0] * self.block_size)
            self._data.sync()
        except OSError:
            pass            # the store is failing: the disk stops either way

    def _append(self, chunks: list[bytes]) -> list[int] | None:
        """Write the groups of one flush (not synced): their PBAs, or None if the
        file system is full."""
        bs = self.block_size
        nexts = [p for start, n in self.alloc.allocate_apart(len(chunks)) for p in range(start, start + n)]
        self._log_owned.extend(nexts)
        at = [self._log_next] + nexts[:-1]
        log_id, index, prev = self._log.log_id, self._log_index, self._log_prev
        try:
            for i, (pba, chunk) in enumerate(zip(at, chunks)):
                group, prev = lf.encode_group(bs, log_id, index + i, nexts[i], self._log_writer, prev,
                                              chunk, i == len(chunks) - 1)
                self._data.write(memoryview(group), pba * bs)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # No room for the log in the file system (its blocks may be
            # holes): nothing was lost, since a write that fails writes
            # nothing, and a full commit frees space. The groups written
            # are a chain without an end; the commit starts a new epoch.
            return None
        self._log_next, self._log_prev = nexts[-1], prev
        self._log_index += len(chunks)
        return at

    def _reserve_next(self) -> None:
        """Give the next group's block file system space now, while there is some.

        Zeros, written without a sync: the block is allocated in the file
        system, so the next flush's first group fits even when the file
        system has filled up meanwhile, and the block never holds a group
        of an earlier chain. On a full file system it stays a hole, and a
        flush that cannot write its group commits in full instead.
        """
        try:
            self._data.write(memoryview(bytes(self.block_size)), self._log_next * self.block_size)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise self._stop(e) from None

    def _close_commit(self) -> None:
        """A closing disk's last commit: in full, unless only space for it is missing.

        The log is flushed first; when it then holds every write, a full
        commit that finds the file system full loses nothing (the next
        writable open replays the log), so closing succeeds with a warning.
        """
        if not self._flush_by_log():
            self._commit()
            return
        self._log_holds_all = True
        try:
            self._commit()
        except NoSpace:
            log.warning("disk %s: no space to commit its metadata at close; every write is in its "
                        "redo log, which the next writable open replays (free space first)", self.location)

    def _next_epoch(self) -> None:
        """Called by each full commit before the allocator's frees are folded in:
        the epoch's log blocks are freed with it, and the next epoch's head
        is allocated and recorded in the same commit. An epoch with no group
        yet goes on (a commit with nothing else to do then writes nothing):
        a group of a flush that replay dropped cannot join it (hash chain)."""
        self._log_stream = []
        self._log_released = 0
        self._unlogged = False
        if LOG_ENABLED and self._anchor is None and self._log is not None and self._log_index == 0:
            return
        for pba in self._log_owned:
            self.alloc.release(pba, 1)
        self._log_owned = []
        if not LOG_ENABLED or self._anchor is not None:
            if self._log is not None:
                self.forest.meta_put(LOG_KEY, None)
            self._log = None
            return
        if self.config.version < fmt.CONTAINER_VERSION:
            # A vdisk that does not know the log must not open the disk: it
            # would miss the flushes the log holds.
            self.config.version = fmt.CONTAINER_VERSION
            self.forest.meta_put(b"disk/config", fmt.encode_config(self.config))
        (head, _n), = self.alloc.allocate_apart(1)
        self._log = lf.LogRecord(os.urandom(16), head)
        self._log_owned = [head]
        self._log_next, self._log_index, self._log_prev = head, 0, lf.NO_PREV
        self._reserve_next()
        self.forest.meta_put(LOG_KEY, lf.encode_log(self._log))

    # ------------------------------------------------------------ replay

    def _replay_log(self) -> None:
        """Redo the flushed writes the last full commit does not hold.

        Called by a writable open, after the maps are loaded and their
        counters checked. A disk with no log record (never flushed by a
        vdisk with the log, or its log switched off) has nothing to redo,
        and its first flush commits in full. Otherwise the writer goes on
        appending to the epoch after the last flush redone.
        """
        rec = lf.decode_log(self.forest.meta_get(LOG_KEY))
        if rec is None:
            return
        start = _Flush([], [], rec.head, 0, lf.NO_PREV)
        flushes = self._read_chain(rec, start)
        if flushes and not self._landed(flushes[-1].records):
            flushes.pop()
        self._redo_flushes(rec, flushes)
        last = flushes[-1] if flushes else start
        self._log = rec
        self._log_owned = [rec.head] + [p for f in flushes for p in f.at if p != rec.head]
        # The next group's block: the head, or one a flush allocated, now claimed again.
        if last.next_pba != rec.head:
            self.alloc.claim(last.next_pba, 1)
            self._log_owned.append(last.next_pba)
        self._log_next, self._log_index, self._log_prev = last.next_pba, last.next_index, last.digest
        self._unlogged = False
        self._reserve_next()

    def _follow_log(self) -> None:
        """A read-only opener's replay: the flushes logged since it last looked, in memory.

        The writer's flushes do not change the committed state a reader
        pins, so each request looks for new groups after the last one
        applied (one block read) and redoes what it finds in the forest's
        scratch mode. What it reads was written by a writer that may have
        committed since and reused the blocks: such a chain simply ends
        (ids and hashes), and data read through it fails its checksum and
        is retried in the newer view (vdisk/reader.py). The last flush is
        applied only once all it names has landed.
        """
        if self._ro_log is None:
            rec = lf.decode_log(self.forest.meta_get(LOG_KEY))
            if rec is None:
                return
            self._ro_log = (rec, _Flush([], [], rec.head, 0, lf.NO_PREV))
            self._log_owned = [rec.head]
        rec, last = self._ro_log
        flushes = self._read_chain(rec, last)
        if flushes and not self._landed(flushes[-1].records):
            flushes.pop()
        if not flushes:
            return
        self.forest.scratch = True
        self._redo_flushes(rec, flushes)
        self._log_owned.extend(p for f in flushes for p in f.at if p != rec.head)
        self._ro_log = (rec, flushes[-1])

    def _log_moved(self) -> bool:
        """Whether the writer flushed through the log since this reader last looked."""
        if self._ro_log is None:
            return False            # a new epoch comes with a commit: the view moves
        rec, last = self._ro_log
        try:
            buf = self._data.read(self.block_size, last.next_pba * self.block_size)
        except OSError:
            return False
        return lf.decode_group(buf, rec.log_id, last.next_index, last.digest) is not None

    def _redo_flushes(self, rec: lf.LogRecord, flushes) -> None:
        line = self._line(None)
        self._replaying = True
        try:
            with self.changing(logged=True):
                for f in flushes:
                    for pba in f.at:
                        if pba != rec.head:         # the commit allocated the head
                            self.alloc.claim(pba, 1)
                    for kind, lba, count, pieces, sums in f.records:
                        self._redo(line, kind, lba, count, pieces, sums)
        finally:
            self._replaying = False

    def _read_chain(self, rec: lf.LogRecord, after: "_Flush") -> list["_Flush"]:
        """The epoch's complete flushes after the flush ``after`` (or the start)."""
        return _chain(self._data.read, self.block_size, rec, after, self.location)[0]

    def _landed(self, records) -> bool:
        return _all_landed(self._data.read, self.block_size, records)

    def _redo(self, line, kind, lba: int, count: int, pieces, sums) -> None:
        _check_inside(lba, count, self.size // self.block_size, self.location)
        if kind == lf.ZERO:
            self._unmap_blocks(lba, count, line)
            return
        for pba, n in pieces:
            self.alloc.claim(pba, n)
        self._map_sums(lba, count, sums, pieces, line)


# ------------------------------------------------------------ reading a log

class Pending(NamedTuple):
    """What an epoch's redo log holds beyond the full commit that began it (:func:`pending`)."""

    flushes: int        # complete flushes a writable open redoes
    groups: int         # their groups
    dropped: int        # groups a writable open drops: of a last flush cut short, or whose data did not land


def pending(read, block_size: int, rec: lf.LogRecord, blocks: int, name: str) -> Pending:
    """Count what the log of epoch ``rec`` holds as replay finds it, without replaying it.

    For a checker of the committed state (``vdisk verify``): the flushes
    there are durable but not in the maps yet. ``read(length, offset)``
    reads the data store (OSError on failure); ``blocks`` is the disk's
    size in blocks; ``name`` names the disk in messages. Raises
    IntegrityError (UnsupportedVersion for a newer group) where replay
    would fail: a group that cannot be read, records that do not parse or
    that name blocks outside the disk. A chain that simply ends (a flush
    cut short, a writer that committed meanwhile) is no error.
    """
    flushes, cut = _chain(read, block_size, rec, _Flush([], [], rec.head, 0, lf.NO_PREV), name)
    dropped = cut
    if flushes and not _all_landed(read, block_size, flushes[-1].records):
        dropped += len(flushes.pop().at)
    for f in flushes:
        for _kind, lba, count, _pieces, _sums in f.records:
            _check_inside(lba, count, blocks, name)
    return Pending(len(flushes), sum(len(f.at) for f in flushes), dropped)


def _chain(read, bs: int, rec: lf.LogRecord, after: "_Flush", name: str) -> tuple[list["_Flush"], int]:
    """The epoch's complete flushes after the flush ``after`` (or the start), and
    how many groups follow them without the last group of their flush."""
    flushes = []
    at, parts = [], []
    pba, index, prev = after.next_pba, after.next_index, after.digest
    while index < 2 * LOG_MAX_GROUPS:
        try:
            buf = read(bs, pba * bs)
        except OSError as e:
            raise IntegrityError(f"disk {name}: reading its redo log at PBA {pba} failed: "
                                 f"{e.strerror or e}") from None
        group = lf.decode_group(buf, rec.log_id, index, prev)
        if group is None:
            break
        at.append(pba)
        parts.append(group.payload)
        pba, index, prev = group.next_pba, index + 1, group.digest
        if group.last:
            flushes.append(_Flush(at, list(lf.parse(b"".join(parts))), pba, index, prev))
            at, parts = [], []
    # Groups of a flush whose last group is missing: that flush never returned.
    return flushes, len(at)


def _all_landed(read, bs: int, records) -> bool:
    """Whether every block the last flush's records leave mapped holds its checksum.

    The one flush that may not have returned before the crash: its
    records can be durable while some of its data is not. A block a
    later record of the same flush replaced is not looked at: once the
    flush returned it was free, and may hold anything since.
    """
    covered = set()
    for _kind, lba, count, pieces, sums in reversed(records):
        blocks = range(lba, lba + count)
        if pieces:
            i = 0
            for pba, n in pieces:
                for j in range(n):
                    if lba + i + j not in covered and not _holds(read, bs, pba + j, sums[i + j]):
                        return False
                i += n
        covered.update(blocks)
    return True


def _holds(read, bs: int, pba: int, csum: bytes) -> bool:
    try:
        buf = read(bs, pba * bs)
    except OSError:
        return False
    return len(buf) == bs and blake3.blake3(buf).digest(CSUM_BYTES) == csum


def _check_inside(lba: int, count: int, blocks: int, name: str) -> None:
    """A record's blocks ``lba..lba+count`` must lie inside a disk of ``blocks`` blocks."""
    if count <= 0 or lba + count > blocks:
        raise IntegrityError(f"disk {name}: its redo log names blocks {lba}+{count} "
                             f"outside the disk: the disk is damaged")


class _Flush(NamedTuple):
    at: list            # PBAs of its groups
    records: list       # parsed (vdisk.logformat.parse)
    next_pba: int       # where the group after it goes
    next_index: int
    digest: bytes       # the hash of its last group
