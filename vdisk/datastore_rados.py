"""The PBA space in a RADOS pool: objects of ``object_size`` bytes, written async.

The :class:`vdisk.datastore.DataStore` contract over librados, for a disk
named NAME (format version 1, docs/RADOS.md has the table):

============================ ===================================================
object                       holds
============================ ===================================================
``NAME.data.<16 hex>``       bytes [i * object_size, (i + 1) * object_size) of the
                             PBA space; missing = zeros (never written or punched)
``NAME.data.map``            the object map: byte i is 1 if object i may exist,
                             0 if it does not (a superset: set before the object
                             is written, cleared after it is removed); xattrs
                             ``vdisk.format`` (b"1"), ``vdisk.object_size``,
                             ``vdisk.size`` (decimal ASCII)
============================ ===================================================

Writes are ``aio_write`` calls, up to ``max_in_flight`` at once; :meth:`sync`
waits for all of them and raises the first failure - and keeps raising it:
a write the cluster refused may be lost, and no later sync may report
success over it (the durability contract, docs/ARCHITECTURE.md). Reads wait
for the writes in flight to the objects they touch, so a block written and
not yet synced reads back.

Reads: :meth:`RadosDataStore.read_many` registers every piece of a request
as a read in flight (per object, as byte ranges) and returns; its
``wait()`` collects them. Several pieces are ``aio_read`` calls, all issued
at once; a request of one piece (a 4 KiB read) is a synchronous
``ioctx.read`` made by ``wait()``, outside the engine's lock - the aio path
costs one more thread hop and the GIL twice, ~50-75 us a read on the test
machine. A write or punch over a range with a read in flight waits for that
read, and performs a one-piece read no ``wait()`` has started yet itself:
so what a read returns is what its range held when ``read_many`` was
called (the interface's rule, vdisk/datastore.py "Reads in flight"), and no
write can wait on a caller that never collects its read.

The size (the end of the highest write) is kept in memory and stored at
:meth:`sync` when it grew: a crash can lose the growth only together with
the unsynced writes beyond it, which no commit references. A read-only
opener re-reads it when asked for bytes past what it knew, so it can read
what the writer committed after it opened.

Errors are ``OSError`` with librados' errno (ETIMEDOUT with an op timeout
set, ESHUTDOWN once the client is blocklisted), as the protocol asks.
"""

from __future__ import annotations

import errno
import os
import threading

FORMAT = b"1"
DEFAULT_OBJECT_SIZE = 4 << 20
_X_FORMAT, _X_OBJECT_SIZE, _X_SIZE = "vdisk.format", "vdisk.object_size", "vdisk.size"
_ZERO_SWAPPED: bool | None = None          # see RadosDataStore._zero


def _oserror(e: Exception, what: str) -> OSError:
    code = getattr(e, "errno", None) or errno.EIO
    return OSError(abs(code), f"{what}: {os.strerror(abs(code))} ({e})")


class RadosDataStore:
    """The PBA space of disk ``name`` in the pool of ``ioctx`` (owned by the caller)."""

    def __init__(self, ioctx, name: str, object_size: int = DEFAULT_OBJECT_SIZE, readonly: bool = False,
                 max_in_flight: int = 64, create: bool = True):
        import rados
        self._rados = rados
        self.ioctx, self.name, self.readonly = ioctx, name, readonly
        self.map_oid = f"{name}.data.map"
        self._lock = threading.Condition()
        self._pending: dict[str, int] = {}      # object -> writes in flight to it
        self._reading: dict[str, list[tuple]] = {}   # object -> (start, end, _Reads) of reads in flight
        self._read_waiters = 0                  # writes, punches, closes waiting for reads in flight
        self._in_flight = 0
        self._slots = threading.Semaphore(max_in_flight)
        self._error: OSError | None = None      # the first failed write: sticky
        self.closed = False
        try:
            attrs = dict(ioctx.get_xattrs(self.map_oid))
        except rados.ObjectNotFound:
            if readonly or not create:
                raise OSError(errno.ENOENT, f"RADOS data store {name} does not exist") from None
            attrs = self._create(object_size)
        except rados.Error as e:
            raise _oserror(e, f"cannot open RADOS data store {name}") from None
        if attrs.get(_X_FORMAT) != FORMAT:
            raise OSError(errno.EPROTO, f"RADOS data store {name}: unsupported format {attrs.get(_X_FORMAT)!r}")
        self.object_size = int(attrs[_X_OBJECT_SIZE])
        self._size = self._stored_size = int(attrs.get(_X_SIZE, b"0"))
        self._map = self._read_map()

    def _create(self, object_size: int) -> dict:
        if object_size <= 0 or object_size & (object_size - 1):
            raise OSError(errno.EINVAL, f"object size {object_size} is not a power of two")
        attrs = {_X_FORMAT: FORMAT, _X_OBJECT_SIZE: str(object_size).encode(), _X_SIZE: b"0"}
        op = self.ioctx.create_write_op()
        try:
            op.new(self._rados.LIBRADOS_CREATE_EXCLUSIVE)
            for k, v in attrs.items():
                op.set_xattr(k, v)
            self.ioctx.operate_write_op(op, self.map_oid)
        except self._rados.ObjectExists:               # another creator won: use its header
            return dict(self.ioctx.get_xattrs(self.map_oid))
        except self._rados.Error as e:
            raise _oserror(e, f"cannot create RADOS data store {self.name}") from None
        finally:
            op.release()
        return attrs

    def _read_map(self) -> bytearray:
        out = bytearray()
        while True:
            try:
                chunk = self.ioctx.read(self.map_oid, 1 << 22, len(out))
            except self._rados.Error as e:
                raise _oserror(e, f"cannot read the object map of {self.name}") from None
            out += chunk
            if len(chunk) < 1 << 22:
                return out

    def _oid(self, index: int) -> str:
        return f"{self.name}.data.{index:016x}"

    def _pieces(self, offset: int, length: int):
        """(object index, offset inside it, length, offset in the request)."""
        osz, pos, end = self.object_size, offset, offset + length
        while pos < end:
            index, within = divmod(pos, osz)
            take = min(osz - within, end - pos)
            yield index, within, take, pos - offset
            pos += take

    # ------------------------------------------------------------ writes

    def _check(self):
        if self.closed:
            raise OSError(errno.EBADF, f"RADOS data store {self.name} is closed")

    def _submit(self, oid: str, start, tolerate: int = 0) -> None:
        """Run ``start(oncomplete)`` (an aio call) as one tracked write.

        ``tolerate``: an errno that is no failure (ENOENT removing what is gone).
        """
        self._slots.acquire()
        with self._lock:
            self._pending[oid] = self._pending.get(oid, 0) + 1
            self._in_flight += 1

        def done(comp):
            rc = comp.get_return_value()
            with self._lock:
                if rc < 0 and -rc != tolerate and self._error is None:
                    self._error = OSError(-rc, f"write to {oid} failed: {os.strerror(-rc)}")
                left = self._pending[oid] - 1
                if left:
                    self._pending[oid] = left
                else:
                    del self._pending[oid]
                self._in_flight -= 1
                self._lock.notify_all()
            self._slots.release()
        try:
            start(done)
        except Exception as e:
            with self._lock:
                self._pending[oid] -= 1
                if not self._pending[oid]:
                    del self._pending[oid]
                self._in_flight -= 1
                self._lock.notify_all()
            self._slots.release()
            raise _oserror(e, f"write to {oid} failed") from None

    def _mark(self, index: int, value: int) -> None:
        if index >= len(self._map):
            self._map.extend(bytes(index + 1 - len(self._map)))
        self._map[index] = value
        # One writer: its writes to one object are applied in the order issued.
        self._submit(self.map_oid, lambda cb: self.ioctx.aio_write(self.map_oid, bytes([value]), index,
                                                                   oncomplete=cb))

    def write(self, data: memoryview, offset: int) -> None:
        self._check()
        if self.readonly:
            raise OSError(errno.EROFS, f"RADOS data store {self.name} is read-only")
        data = memoryview(data).cast("B")
        for index, within, take, at in self._pieces(offset, len(data)):
            if index >= len(self._map) or not self._map[index]:
                self._mark(index, 1)                  # before the object: the map stays a superset
            oid, chunk = self._oid(index), bytes(data[at:at + take])
            self._wait_reads(oid, within, take)
            self._submit(oid, lambda cb, oid=oid, chunk=chunk, within=within:
                         self.ioctx.aio_write(oid, chunk, within, oncomplete=cb))
        self._size = max(self._size, offset + len(data))

    def start_writeback(self, offset: int, length: int) -> None:
        # The writes are already on their way; only a failure is news.
        self._check()
        with self._lock:
            if self._error is not None:
                raise self._error

    def _wait(self, oids=None) -> None:
        with self._lock:
            if oids is None:
                self._lock.wait_for(lambda: self._in_flight == 0)
            else:
                self._lock.wait_for(lambda: not any(o in self._pending for o in oids))

    def _wait_reads(self, oid: str | None = None, start: int = 0, length: int = 0) -> None:
        """Until no read in flight overlaps ``[start, start + length)`` of ``oid`` (None: any read).

        A one-piece read whose ``wait()`` has not begun is done here, by the
        caller, instead of waited for.
        """
        end = start + length
        while True:
            with self._lock:
                if oid is None:
                    hits = [r for rs in self._reading.values() for r in rs]
                else:
                    hits = [r for r in self._reading.get(oid, ()) if r[0] < end and start < r[1]]
                if not hits:
                    return
                todo = next((r[2] for r in hits if r[2].state is _PENDING), None)
                if todo is None:
                    self._read_waiters += 1
                    try:
                        self._lock.wait()             # a finished read notifies
                    finally:
                        self._read_waiters -= 1
                    continue
                todo.state = _READING
            todo._read_now()

    def sync(self) -> None:
        self._check()
        self._wait()
        with self._lock:
            if self._error is not None:
                raise self._error
        if self._size != self._stored_size and not self.readonly:
            try:
                self.ioctx.set_xattr(self.map_oid, _X_SIZE, str(self._size).encode())
            except self._rados.Error as e:
                self._error = _oserror(e, f"cannot store the size of {self.name}")
                raise self._error from None
            self._stored_size = self._size

    # ------------------------------------------------------------ reads

    def read_many(self, ranges):
        """Register every ``(length, offset)`` range's pieces as reads in flight; returns ``wait``.

        One piece is left to ``wait()`` (:class:`_OneRead`); more are
        ``aio_read`` calls issued here (:class:`_Reads`).
        """
        self._check()
        size = self._size
        if self.readonly and any(offset + length > size for length, offset in ranges):
            self._refresh()
            size = self._size
        lengths = [max(0, min(length, size - offset)) for length, offset in ranges]
        plan = []                                     # (slot, at, object, within, take)
        for slot, (_, offset) in enumerate(ranges):
            for index, within, take, at in self._pieces(offset, lengths[slot]):
                if index < len(self._map) and not self._map[index] and not self.readonly:
                    continue                          # never written, or punched whole: zeros
                plan.append((slot, at, self._oid(index), within, take))
        if len(plan) == 1 and len(lengths) == 1 and plan[0][4] == lengths[0]:
            _, _, oid, within, take = plan[0]
            one = _OneRead(self, oid, within, take)
            with self._lock:
                if oid in self._pending:              # a block written and not yet synced reads back
                    self._lock.wait_for(lambda: oid not in self._pending)
                self._reading.setdefault(oid, []).append((within, within + take, one))
            return one.wait
        reads = _Reads(self, lengths, plan)
        if not plan:
            return reads.wait
        with self._lock:
            oids = {p[2] for p in plan}
            self._lock.wait_for(lambda: not any(o in self._pending for o in oids))
            for oid, start, end, _ in reads.fetches:
                self._reading.setdefault(oid, []).append((start, end, reads))
        for i, (oid, start, end, _) in enumerate(reads.fetches):
            try:
                self.ioctx.aio_read(oid, end - start, start, oncomplete=lambda comp, got, i=i: reads._done(i, comp, got))
            except Exception as e:
                # Not issued: this one and the rest fail; those in flight finish first.
                err = _oserror(e, f"read of {oid} failed")
                with self._lock:
                    for k in range(i, len(reads.fetches)):
                        reads._finish(k, err)
                break
        return reads.wait

    def _read_done(self, oid: str, entry: tuple) -> None:
        """A read in flight is over (the store's lock held)."""
        ranges = self._reading[oid]
        ranges.remove(entry)
        if not ranges:
            del self._reading[oid]
        if self._read_waiters:
            self._lock.notify_all()

    def read_many_into(self, ranges, views):
        """:meth:`read_many`, its bytes copied into ``views`` by ``wait()``."""
        wait = self.read_many(ranges)

        def into() -> list[int]:
            got = wait()
            for view, data in zip(views, got):
                view[:len(data)] = data
            return [len(data) for data in got]
        return into

    def readinto(self, buf: memoryview, offset: int) -> int:
        buf = memoryview(buf).cast("B")
        got = self.read_many([(len(buf), offset)])()[0]
        buf[:len(got)] = got
        return len(got)

    def read(self, length: int, offset: int) -> bytes:
        return self.read_many([(length, offset)])()[0]

    def _refresh(self) -> None:
        try:
            self._size = int(self.ioctx.get_xattr(self.map_oid, _X_SIZE))
        except self._rados.Error as e:
            raise _oserror(e, f"cannot read the size of {self.name}") from None
        self._map = self._read_map()

    # ------------------------------------------------------------ space

    def punch(self, offset: int, length: int) -> bool:
        self._check()
        if self.readonly:
            raise OSError(errno.EROFS, f"RADOS data store {self.name} is read-only")
        end = min(offset + length, self._size)
        if end <= offset:
            return True
        pieces = [p for p in self._pieces(offset, end - offset)
                  if p[0] < len(self._map) and self._map[p[0]]]
        self._wait({self._oid(p[0]) for p in pieces})
        removed, ops = [], []
        for index, within, take, _ in pieces:
            oid = self._oid(index)
            self._wait_reads(oid, within, take)
            if take == self.object_size:
                self._submit(oid, lambda cb, oid=oid: self.ioctx.aio_remove(oid, oncomplete=cb),
                             tolerate=errno.ENOENT)
                removed.append(index)
            else:
                op = self.ioctx.create_write_op()
                self._zero(op, within, take)
                ops.append(op)
                self._submit(oid, lambda cb, oid=oid, op=op: self.ioctx.operate_aio_write_op(op, oid, oncomplete=cb),
                             tolerate=errno.ENOENT)
        self._wait()
        for op in ops:                                # not inside its callback: librados still holds it there
            op.release()
        with self._lock:
            if self._error is not None:
                raise self._error
        for index in removed:                         # after the object: still a superset
            self._mark(index, 0)
        return True

    def _zero(self, op, offset: int, length: int) -> None:
        # Debian's binding (Ceph 16) passes WriteOp.zero's arguments to
        # rados_write_op_zero swapped (ceph tracker 67471), and an OSD of that
        # age aborts on a zero of length 0 - so the order is tested once, on
        # a scratch object, and never guessed.
        global _ZERO_SWAPPED
        if _ZERO_SWAPPED is None:
            probe = f"{self.name}.data.zero-probe"
            try:
                self.ioctx.write_full(probe, b"abcd")
                test = self.ioctx.create_write_op()
                try:
                    test.zero(1, 2)
                    self.ioctx.operate_write_op(test, probe)
                finally:
                    test.release()
                got = self.ioctx.read(probe, 4)
                self.ioctx.remove_object(probe)
            except self._rados.Error as e:
                raise _oserror(e, f"cannot punch in {self.name}") from None
            if got not in (b"a\0\0d", b"ab\0d"):
                raise OSError(errno.EIO, f"WriteOp.zero of this rados binding does something unknown: {got!r}")
            _ZERO_SWAPPED = got == b"ab\0d"
        if _ZERO_SWAPPED:
            op.zero(length, offset)
        else:
            op.zero(offset, length)

    def seek_data(self, offset: int) -> int | None:
        self._check()
        if offset >= self._size:
            return None
        index = offset // self.object_size
        while index < len(self._map) and not self._map[index]:
            index += 1
        if index >= len(self._map) or index * self.object_size >= self._size:
            return None
        return max(offset, index * self.object_size)

    def seek_hole(self, offset: int) -> int:
        self._check()
        index = offset // self.object_size
        while index < len(self._map) and self._map[index]:
            index += 1
        return min(max(offset, index * self.object_size), self._size)

    def size(self) -> int:
        return self._size

    def allocated_bytes(self) -> int:
        """Objects that may exist, at their full size: RADOS keeps no cheaper count."""
        return sum(self._map) * self.object_size

    def close(self) -> None:
        if not self.closed:
            self._wait()                              # no callback after the caller closes the ioctx
            self._wait_reads()
            self.closed = True

    def remove(self) -> None:
        """Remove every object of this store (the disk is being deleted).

        The object map goes last, and only once every data object is gone:
        it is what finds them, so a remove that failed (raising the first
        failure) is finished by removing again.
        """
        self._check()
        self._wait_reads()
        for index, exists in enumerate(self._map):
            if exists:
                oid = self._oid(index)
                self._submit(oid, lambda cb, oid=oid: self.ioctx.aio_remove(oid, oncomplete=cb),
                             tolerate=errno.ENOENT)
        self._wait()
        with self._lock:
            if self._error is not None:
                raise self._error
        try:
            self.ioctx.remove_object(self.map_oid)
        except self._rados.ObjectNotFound:
            pass
        except self._rados.Error as e:
            raise _oserror(e, f"cannot remove the object map of {self.name}") from None
        self.closed = True


_PENDING, _READING, _DONE = "pending", "reading", "done"


class _OneRead:
    """A :meth:`RadosDataStore.read_many` of one piece: read synchronously by ``wait()``.

    ``state``: ``pending`` (registered, not read yet), ``reading`` (by
    ``wait()``, or by a write over it that came first), ``done``.
    """

    __slots__ = ("store", "oid", "within", "take", "state", "result", "entry")

    def __init__(self, store: RadosDataStore, oid: str, within: int, take: int):
        self.store, self.oid, self.within, self.take = store, oid, within, take
        self.state, self.result = _PENDING, None
        self.entry = (within, within + take, self)

    def _read_now(self) -> None:
        """Read the piece (its state is ``reading``: this caller took it)."""
        st = self.store
        result = OSError(errno.EIO, f"read of {self.oid} failed")
        try:
            result = st.ioctx.read(self.oid, self.take, self.within)
            if len(result) < self.take:               # past the object's end: zeros
                result += bytes(self.take - len(result))
        except st._rados.ObjectNotFound:
            result = bytes(self.take)                 # the object does not exist: zeros
        except st._rados.Error as e:
            result = _oserror(e, f"read of {self.oid} failed")
        finally:                                      # done whatever happened: waiters must wake
            with st._lock:
                self.result, self.state = result, _DONE
                st._read_done(self.oid, self.entry)

    def wait(self) -> list[bytes]:
        st = self.store
        if self.state is not _DONE:
            with st._lock:
                mine = self.state is _PENDING
                if mine:
                    self.state = _READING
            if mine:
                self._read_now()
            else:                                     # a write is reading it for us
                with st._lock:
                    st._read_waiters += 1
                    try:
                        st._lock.wait_for(lambda: self.state is _DONE)
                    finally:
                        st._read_waiters -= 1
        if isinstance(self.result, OSError):
            raise self.result
        return [self.result]


class _Reads:
    """A :meth:`RadosDataStore.read_many` of several pieces, all ``aio_read`` in flight.

    ``plan`` holds one ``(slot, at, object, within, take)`` a piece: range
    ``slot``'s bytes ``[at, at + take)`` are the object's ``[within, within
    + take)``. Pieces of one object at most ``MERGE_GAP`` apart are one
    fetch, ``(object, start, end, pieces)``, one ``aio_read`` (each costs
    ~40-60 us of librados CPU, a few KiB more in one read far less; after
    random rewrites a large read's extents are mostly pieces of one old
    run with the moved blocks' holes between them). Each completion stores
    its bytes (or its failure) and takes its fetch off the store's reads in
    flight, under the store's lock. ``wait()`` then builds each range: the
    fetch itself when it is exactly the whole range (no copy), else the
    pieces over zeros (a missing object, one shorter than the piece, or an
    object the map says was never written).
    """

    state = "issued"                                  # never pending: nothing for a write to do
    MERGE_GAP = 64 << 10

    def __init__(self, store: RadosDataStore, lengths: list[int], plan: list):
        self.store, self.lengths, self.plan = store, lengths, plan
        fetches: list = []
        for i in sorted(range(len(plan)), key=lambda i: (plan[i][2], plan[i][3])):
            _, _, oid, within, take = plan[i]
            last = fetches[-1] if fetches else None
            if last is not None and last[0] == oid and within <= last[2] + self.MERGE_GAP:
                last[2] = max(last[2], within + take)
                last[3].append(i)
            else:
                fetches.append([oid, within, within + take, [i]])
        self.fetches = [tuple(f) for f in fetches]
        self.got: list = [None] * len(self.fetches)
        self.left = len(self.fetches)
        self.all_done = threading.Event()             # its own: a completion wakes only its waiter
        self.data: list[bytes] | None = None

    def _done(self, i: int, comp, got) -> None:
        """Fetch ``i``'s completion (a librados thread)."""
        result = OSError(errno.EIO, "read completion failed")
        try:
            rc = comp.get_return_value()
            if rc >= 0:
                result = got
            elif -rc == errno.ENOENT:
                result = b""                          # the object does not exist: zeros
            else:
                result = OSError(-rc, f"read of {self.fetches[i][0]} failed: {os.strerror(-rc)}")
        finally:                                      # counted whatever happened: wait() must end
            with self.store._lock:
                self._finish(i, result)

    def _finish(self, i: int, result) -> None:
        """Fetch ``i`` is done (the store's lock held)."""
        oid, start, end, _ = self.fetches[i]
        self.got[i] = result
        self.store._read_done(oid, (start, end, self))
        self.left -= 1
        if not self.left:
            self.all_done.set()

    def wait(self) -> list[bytes]:
        if self.data is None:
            if self.fetches:
                self.all_done.wait()
            failed = next((g for g in self.got if isinstance(g, OSError)), None)
            if failed is not None:
                raise failed
            out: list = [None] * len(self.lengths)
            for (_, start, _, pieces), got in zip(self.fetches, self.got):
                for i in pieces:
                    slot, at, _, within, take = self.plan[i]
                    n = self.lengths[slot]
                    if len(pieces) == 1 and at == 0 and take == n and len(got) == n:
                        out[slot] = got               # the whole range in one read
                        continue
                    if out[slot] is None:
                        out[slot] = bytearray(n)
                    part = memoryview(got)[within - start:within - start + take]
                    out[slot][at:at + len(part)] = part
            self.data = [bytes(n) if o is None else o if isinstance(o, bytes) else bytes(o)
                         for o, n in zip(out, self.lengths)]
        return self.data
