"""Node stores: where encoded B+tree nodes and small metadata records live.

The tree algorithm (:mod:`vdisk.btree.tree`) never does I/O itself; it asks a
store for a node's bytes and hands it one batch of changes per commit. This
module holds the interface (:class:`NodeStore`) and the real store,
:class:`LmdbNodeStore`; its in-memory twin for tests and scratch work is
:class:`vdisk.btree.store_memory.MemoryNodeStore`.

A commit is atomic: either every put and delete of the batch is visible after
it, or none is. LMDB gives exactly that with one write transaction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from typing import Iterable, Iterator, Mapping, Protocol

import lmdb

from vdisk.errors import IntegrityError, NoSpace, ReadOnly, StorageError, VdiskError

from . import mapped
from .lmdbfile import check_pages

_NODE_KEY = struct.Struct(">Q")  # big-endian: LMDB keeps node ids in numeric order


class NodeStore(Protocol):
    readonly: bool

    def load(self, node_id: int) -> bytes | None: ...

    def meta_get(self, key: bytes) -> bytes | None: ...

    def meta_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]: ...

    # ``puts`` may encode each node only when asked for it (Forest.commit):
    # look each one up as it is written, and again on a retry.
    def commit(self, puts: Mapping[int, bytes], deletes: Iterable[int],
               meta: dict[bytes, bytes | None]) -> None: ...

    def node_ids(self) -> Iterator[int]: ...

    def last_node_id(self) -> int | None: ...

    def close(self) -> None: ...


# Every this many node loads (and after each commit) the pages of LMDB's map
# that the loads faulted in are dropped from the process (btree/mapped.py):
# the forest holds the decoded nodes, and 4 MiB of mapped copies is the most
# a process keeps beside them.
SHED_EVERY_LOADS = 1024

# Allocated blocks kept beside the database for a commit on a full file system.
RESERVE_FILE = "reserve"
RESERVE_BYTES = 4 << 20

# LMDB allows one environment per database file per process (a second one
# would break its locking), so stores of one directory in one process share
# it: a read-only view of a disk can be opened beside its writer.
class _Shared:
    def __init__(self, env, nodes_db, meta_db, writable: bool, psize: int, file: str):
        self.env, self.nodes_db, self.meta_db, self.writable = env, nodes_db, meta_db, writable
        self.psize, self.file = psize, file
        self.users = 1
        # After a failed meta-page write LMDB answers MDB_PANIC to every call
        # until the environment is closed; this keeps the I/O error behind it.
        self.failure: str | None = None
        self.panicked = False
        self.loads = 0
        self.mapped: list[tuple[int, int]] | None = None

    def shed(self):
        """Drop the map's pages this process touched (see SHED_EVERY_LOADS)."""
        self.loads = 0
        if self.mapped is None or not mapped.drop_resident(self.mapped):
            self.mapped = mapped.mappings(self.file)
            mapped.drop_resident(self.mapped)


_ENVS: dict[str, _Shared] = {}     # realpath -> the one environment of that directory
_ENVS_LOCK = threading.Lock()


def _open_env(key: str, path: str, readonly: bool, create: bool, map_size: int) -> _Shared:
    with _ENVS_LOCK:
        shared = _ENVS.get(key)
        if shared is not None:
            if not readonly and not shared.writable:
                raise IntegrityError(f"metadata database {path} is already open read-only in this "
                                     f"process; close that first to open it for writing")
            if shared.panicked:
                raise StorageError(f"metadata store {path} failed an I/O earlier ({shared.failure}) and is "
                                   f"still open in this process; close every user of the disk, then reopen it")
            shared.users += 1
            return shared
        file = os.path.join(path, "data.mdb")
        need = None
        if os.path.exists(file) and not (create and os.path.getsize(file) == 0):
            need = check_pages(file)       # before LMDB maps it: never a SIGBUS, never a write
        try:
            env = lmdb.open(path, map_size=map_size, max_dbs=4, readonly=readonly,
                            create=create and not readonly, subdir=True, readahead=False,
                            lock=True, metasync=True, sync=True)
        except lmdb.Error as e:
            raise _open_error(path, e) from None
        try:
            if need is not None and not readonly:
                _cover(file, need)
            nodes_db = env.open_db(b"nodes", create=not readonly)
            meta_db = env.open_db(b"meta", create=not readonly)
            psize = env.stat()["psize"]
        except lmdb.Error as e:
            env.close()
            raise _open_error(path, e) from None
        except BaseException:
            env.close()
            raise
        shared = _ENVS[key] = _Shared(env, nodes_db, meta_db, not readonly, psize, file)
        return shared


def _open_error(path: str, e: lmdb.Error):
    code = getattr(e, "code", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
        # Not damage: the file system is full (creating or opening writes pages).
        return NoSpace(f"cannot open metadata database {path}: no space left on the file system")
    if code in (errno.EIO, errno.EFBIG) and _nearly_full(path):
        # LMDB reports a short write as EIO, which is what a full file system gives.
        return NoSpace(f"cannot open metadata database {path}: no space left on the file system ({e})")
    if code == errno.EIO:
        return StorageError(f"cannot open metadata database {path}: {e}")
    return IntegrityError(f"cannot open metadata database {path}: {e}")


def _nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < (1 << 20)


def _release_env(key: str):
    with _ENVS_LOCK:
        shared = _ENVS[key]
        shared.users -= 1
        if shared.users == 0:
            del _ENVS[key]
            shared.env.close()


def _cover(file: str, need: int) -> int:
    """Grow ``file`` to at least ``need`` bytes; returns its size. Best effort.

    Keeps a short file rare (see :func:`check_pages`), so opening is one
    fstat; when it cannot grow (a full file system) the file stays short and
    healthy, and the next open tells so from the free list.
    """
    try:
        fd = os.open(file, os.O_RDWR)
    except OSError:
        return 0
    try:
        have = os.fstat(fd).st_size
        if have < need:
            os.posix_fallocate(fd, have, need - have)     # grows, never shrinks
            have = need
        return have
    except OSError:
        return 0
    finally:
        os.close(fd)


# Errors that mean the pages read are wrong, not that reading them failed.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadChecksumError)


class LmdbNodeStore:
    """Nodes and metadata in one LMDB environment (a directory).

    Named databases: ``nodes`` (node id, big-endian u64 -> encoded node) and
    ``meta`` (tree roots, counters, and the records of layers above).

    Durability: the environment is opened with LMDB's default ``sync=True``
    and ``metasync=True``, so every commit is on stable storage when it
    returns, and a power cut can never corrupt the database (LMDB's no-sync
    modes can: they let pages of the last durable state be reused before the
    next fsync). Callers make commits rare instead: one per flush or per
    bounded batch of work.

    Readers in other processes see only committed state. A read-only store
    can pin one consistent view for a whole walk with :meth:`read_view`.
    """

    # Address space only: LMDB grows the file as it fills, up to this bound.
    DEFAULT_MAP_SIZE = 1 << 40

    def __init__(self, path: str | os.PathLike, readonly: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE, create: bool = True):
        self.path = os.fspath(path)
        self.readonly = readonly
        self._file = os.path.join(self.path, "data.mdb")
        if not create and not os.path.exists(self._file):
            raise IntegrityError(f"metadata database {self._file} is missing")
        self._key = os.path.realpath(self.path)
        self._shared = _open_env(self._key, self.path, readonly, create, map_size)
        self.env, self.nodes_db, self.meta_db = self._shared.env, self._shared.nodes_db, self._shared.meta_db
        self._view = threading.local()
        self._covered = 0           # bytes data.mdb is known to have (it only grows)
        self._reserve = os.path.join(self.path, RESERVE_FILE)
        if not readonly:
            self._keep_reserve()

    def _keep_reserve(self):
        """Hold RESERVE_BYTES of the file system for a commit that finds it full.

        A writer commits rarely (a flush goes through vdisk's redo log), so
        the commit that comes when the file system has filled up may need
        more new pages than LMDB has free: without them the disk could not
        commit the trim that would free space. A file of allocated blocks,
        given back at that moment (see :meth:`commit`), lets it through.
        Best effort: on a full file system there is none until space comes back.
        """
        if RESERVE_BYTES <= 0 or os.path.exists(self._reserve):
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            fd = None
            try:
                os.unlink(self._reserve)
            except OSError:
                pass
        finally:
            if fd is not None:
                os.close(fd)

    # ------------------------------------------------------------ errors

    def _error(self, e: lmdb.Error, writing: bool = False) -> VdiskError:
        """What an LMDB failure means to a user: damage, or failed storage.

        LMDB's own codes are negative and, met while reading, mean the pages
        are wrong; positive ones are the system's errno (EIO, ...): the
        storage failed, and the pages may be fine.
        """
        shared = self._shared
        if isinstance(e, lmdb.PanicError):
            shared.panicked = True
        if shared.panicked:
            return StorageError(f"metadata store {self.path} failed an I/O earlier ({shared.failure or e}); "
                                f"reopen the disk")
        code = getattr(e, "code", 0) or 0
        if isinstance(e, _DAMAGE) or (not writing and code <= 0):
            return IntegrityError(f"metadata database {self.path} is damaged ({e}): run vdisk verify")
        return StorageError(f"metadata store {self.path} failed: {e}")

    def _commit_error(self, e: lmdb.Error, puts) -> VdiskError:
        if isinstance(e, lmdb.MapFullError):
            return NoSpace(f"metadata database {self.path} reached its size limit")
        code = getattr(e, "code", None)
        if isinstance(e, lmdb.DiskError) or code == errno.ENOSPC or "No space" in str(e):
            return NoSpace(f"no space left for metadata in {self.path}")
        if code in (errno.EIO, errno.EFBIG) and self._file_system_full(sum(map(len, puts.values()))):
            # LMDB reports a short write as EIO, which is what a full ext4 gives.
            return NoSpace(f"no space left for metadata in {self.path} (the commit failed: {e}, "
                           f"and the file system is full)")
        if not isinstance(e, (lmdb.PanicError, *_DAMAGE)):
            self._shared.failure = f"{e}"       # what a later MDB_PANIC is the echo of
        return self._error(e, writing=True)

    def _file_system_full(self, need: int) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        return free * st.f_frsize < need + (1 << 20)

    # ------------------------------------------------------------ reads

    def _txn(self):
        return getattr(self._view, "txn", None)

    def _begin(self, **kw):
        try:
            return self.env.begin(**kw)
        except lmdb.Error as e:
            raise self._error(e) from None

    @contextlib.contextmanager
    def read_view(self):
        """Pin one committed snapshot of the database for every read inside.

        Yields the view's id (LMDB's transaction id: it grows with every
        commit), which :meth:`current_view` compares against.
        """
        txn = self._txn()
        if txn is not None:
            yield txn.id()
            return
        txn = self._begin(buffers=False)
        self._view.txn = txn
        try:
            yield txn.id()
        finally:
            self._view.txn = None
            txn.abort()

    def current_view(self) -> int:
        """The id of the newest committed view (see :meth:`read_view`)."""
        with self._begin() as txn:
            return txn.id()

    def _read(self, key: bytes, db):
        try:
            txn = self._txn()
            if txn is not None:
                return txn.get(key, db=db)
            with self._begin(db=db, buffers=False) as t:
                return t.get(key)
        except lmdb.Error as e:
            raise self._error(e) from None

    def load(self, node_id):
        shared = self._shared
        shared.loads += 1
        if shared.loads >= SHED_EVERY_LOADS:
            shared.shed()
        return self._read(_NODE_KEY.pack(node_id), self.nodes_db)

    def shed(self):
        """Drop the pages of LMDB's map that reads faulted into this process
        (they stay in the page cache); reads go on as before."""
        self._shared.shed()

    def meta_get(self, key):
        return self._read(key, self.meta_db)

    def meta_items(self, prefix):
        def collect(txn):
            out = []
            cur = txn.cursor(db=self.meta_db)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append((bytes(k), bytes(v)))
            return out
        try:
            txn = self._txn()
            if txn is not None:
                return collect(txn)
            with self._begin(buffers=False) as t:
                return collect(t)
        except lmdb.Error as e:
            raise self._error(e) from None

    def node_ids(self):
        try:
            txn = self._txn()
            if txn is not None:
                ids = [_NODE_KEY.unpack(k)[0] for k in txn.cursor(db=self.nodes_db).iternext(values=False)]
            else:
                with self._begin(db=self.nodes_db) as t:
                    ids = [_NODE_KEY.unpack(k)[0] for k in t.cursor().iternext(values=False)]
        except lmdb.Error as e:
            raise self._error(e) from None
        return iter(ids)

    def last_node_id(self):
        """The highest stored node id, or None: one cursor step, not a scan."""
        try:
            txn = self._txn()
            if txn is not None:
                cur = txn.cursor(db=self.nodes_db)
                return _NODE_KEY.unpack(cur.key())[0] if cur.last() else None
            with self._begin(db=self.nodes_db) as t:
                cur = t.cursor()
                return _NODE_KEY.unpack(cur.key())[0] if cur.last() else None
        except lmdb.Error as e:
            raise self._error(e) from None

    # ------------------------------------------------------------ writes

    def commit(self, puts, deletes, meta):
        if self.readonly:
            raise ReadOnly("metadata is open read-only")
        try:
            self._commit(puts, deletes, meta)
        except NoSpace:
            if self._shared.panicked or not os.path.exists(self._reserve):
                raise
            # The reserve's blocks for the pages this commit needs (see _keep_reserve).
            try:
                os.unlink(self._reserve)
            except OSError:
                raise NoSpace(f"no space left for metadata in {self.path}") from None
            self._commit(puts, deletes, meta)

    def _commit(self, puts, deletes, meta):
        try:
            with self._begin(write=True) as txn:
                nodes = self.nodes_db
                for node_id in sorted(puts):
                    txn.put(_NODE_KEY.pack(node_id), puts[node_id], db=nodes)
                for node_id in deletes:
                    txn.delete(_NODE_KEY.pack(node_id), db=nodes)
                for k, v in meta.items():
                    if v is None:
                        txn.delete(k, db=self.meta_db)
                    else:
                        txn.put(k, v, db=self.meta_db)
        except lmdb.Error as e:
            raise self._commit_error(e, puts) from None
        self._cover_last_page()
        self._shared.shed()

    def _cover_last_page(self):
        """Keep data.mdb reaching its last page, so a short file is damage.

        A page the commit freed again is not written (see check_pages); a
        file that ends before it stays healthy but makes every open read the
        free list. Growing it costs one fallocate in thousands of commits
        and needs no sync: a crash that loses the growth leaves the same
        healthy short file.
        """
        try:
            need = (self.env.info()["last_pgno"] + 1) * self._shared.psize
        except lmdb.Error:
            return
        if need > self._covered:
            self._covered = max(self._covered, _cover(self._file, need))

    def sync(self):
        try:
            self.env.sync(True)
        except lmdb.Error as e:
            if not isinstance(e, lmdb.PanicError):
                self._shared.failure = f"{e}"
            raise self._error(e, writing=True) from None

    def close(self):
        if self.env is not None:
            _release_env(self._key)
            self.env = None
