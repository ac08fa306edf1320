"""Node stores: where encoded B+tree nodes and small metadata records live.

The tree algorithm (:mod:`vdisk.btree.tree`) never does I/O itself; it asks a
store for a node's bytes and hands it one batch of changes per commit. Two
stores exist: :class:`LmdbNodeStore` (the real one) and
:class:`MemoryNodeStore` (tests and scratch work).

A commit is atomic: either every put and delete of the batch is visible after
it, or none is. LMDB gives exactly that with one write transaction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from typing import Iterable, Iterator, Protocol

import lmdb

from vdisk.errors import IntegrityError, NoSpace, ReadOnly

_NODE_KEY = struct.Struct(">Q")  # big-endian: LMDB keeps node ids in numeric order


class NodeStore(Protocol):
    readonly: bool

    def load(self, node_id: int) -> bytes | None: ...

    def meta_get(self, key: bytes) -> bytes | None: ...

    def meta_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]: ...

    def commit(self, puts: dict[int, bytes], deletes: Iterable[int],
               meta: dict[bytes, bytes | None]) -> None: ...

    def node_ids(self) -> Iterator[int]: ...

    def close(self) -> None: ...


class MemoryNodeStore:
    """A store in a dict; commits are atomic because they are one update."""

    def __init__(self):
        self.readonly = False
        self.nodes: dict[int, bytes] = {}
        self.meta: dict[bytes, bytes] = {}

    def load(self, node_id):
        return self.nodes.get(node_id)

    def meta_get(self, key):
        return self.meta.get(key)

    def meta_items(self, prefix):
        return sorted((k, v) for k, v in self.meta.items() if k.startswith(prefix))

    def commit(self, puts, deletes, meta):
        nodes = dict(self.nodes)
        nodes.update(puts)
        for node_id in deletes:
            nodes.pop(node_id, None)
        new_meta = dict(self.meta)
        for k, v in meta.items():
            if v is None:
                new_meta.pop(k, None)
            else:
                new_meta[k] = v
        self.nodes, self.meta = nodes, new_meta

    def node_ids(self):
        return iter(sorted(self.nodes))

    def close(self):
        pass


# LMDB allows one environment per database file per process (a second one
# would break its locking), so stores of one directory in one process share
# it: a read-only view of a disk can be opened beside its writer.
_ENVS: dict[str, list] = {}     # realpath -> [env, nodes_db, meta_db, writable, users]
_ENVS_LOCK = threading.Lock()


def _open_env(key: str, path: str, readonly: bool, create: bool, map_size: int):
    with _ENVS_LOCK:
        shared = _ENVS.get(key)
        if shared is not None:
            if not readonly and not shared[3]:
                raise IntegrityError(f"metadata database {path} is already open read-only in this "
                                     f"process; close that first to open it for writing")
            shared[4] += 1
            return shared[0], shared[1], shared[2]
        try:
            env = lmdb.open(path, map_size=map_size, max_dbs=4, readonly=readonly,
                            create=create and not readonly, subdir=True, readahead=False,
                            lock=True, metasync=True, sync=True)
        except lmdb.Error as e:
            raise IntegrityError(f"cannot open metadata database {path}: {e}") from None
        try:
            _check_file_size(env, path)
            nodes_db = env.open_db(b"nodes", create=not readonly)
            meta_db = env.open_db(b"meta", create=not readonly)
        except lmdb.Error as e:
            env.close()
            raise IntegrityError(f"cannot open metadata database {path}: {e}") from None
        except BaseException:
            env.close()
            raise
        _ENVS[key] = [env, nodes_db, meta_db, not readonly, 1]
        return env, nodes_db, meta_db


def _release_env(key: str):
    with _ENVS_LOCK:
        shared = _ENVS[key]
        shared[4] -= 1
        if shared[4] == 0:
            del _ENVS[key]
            shared[0].close()


def _check_file_size(env, path: str):
    """Make sure every page up to the meta page's last one is in the file.

    LMDB mmaps the file and trusts its meta page, so touching a page past the
    end of a truncated file kills the process with SIGBUS. The file can also
    legitimately end a little before that page: LMDB does not write pages
    that were freed in the transaction that allocated them. Either way,
    extending the file with zeros is safe: a zero page that something does
    reference fails LMDB's page checks (MDB_CORRUPTED, which the store turns
    into an IntegrityError) instead of killing the process.
    """
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    file = os.path.join(path, "data.mdb")
    have = os.path.getsize(file)
    if have >= need:
        return
    try:
        fd = os.open(file, os.O_RDWR)
        try:
            os.posix_fallocate(fd, have, need - have)     # grows, never shrinks
        finally:
            os.close(fd)
    except OSError as e:
        raise IntegrityError(f"metadata database {file} ends at byte {have}, before its last page "
                             f"(byte {need}), and cannot be extended: {e.strerror}") from None


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
        if not create and not os.path.exists(os.path.join(self.path, "data.mdb")):
            raise IntegrityError(f"metadata database {self.path}/data.mdb is missing")
        self._key = os.path.realpath(self.path)
        self.env, self.nodes_db, self.meta_db = _open_env(self._key, self.path, readonly, create, map_size)
        self._view = threading.local()

    def _damaged(self, e: Exception) -> IntegrityError:
        return IntegrityError(f"metadata database {self.path} is damaged ({e}): run vdisk verify")

    def _txn(self):
        return getattr(self._view, "txn", None)

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
        with self.env.begin(buffers=False) as txn:
            self._view.txn = txn
            try:
                yield txn.id()
            finally:
                self._view.txn = None

    def current_view(self) -> int:
        """The id of the newest committed view (see :meth:`read_view`)."""
        with self.env.begin() as txn:
            return txn.id()

    def _read(self, key: bytes, db):
        try:
            txn = self._txn()
            if txn is not None:
                return txn.get(key, db=db)
            with self.env.begin(db=db, buffers=False) as t:
                return t.get(key)
        except lmdb.Error as e:
            raise self._damaged(e) from None

    def load(self, node_id):
        return self._read(_NODE_KEY.pack(node_id), self.nodes_db)

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
            with self.env.begin(buffers=False) as t:
                return collect(t)
        except lmdb.Error as e:
            raise self._damaged(e) from None

    def node_ids(self):
        try:
            txn = self._txn()
            if txn is not None:
                ids = [_NODE_KEY.unpack(k)[0] for k in txn.cursor(db=self.nodes_db).iternext(values=False)]
            else:
                with self.env.begin(db=self.nodes_db) as t:
                    ids = [_NODE_KEY.unpack(k)[0] for k in t.cursor().iternext(values=False)]
        except lmdb.Error as e:
            raise self._damaged(e) from None
        return iter(ids)

    def commit(self, puts, deletes, meta):
        if self.readonly:
            raise ReadOnly("metadata is open read-only")
        try:
            with self.env.begin(write=True) as txn:
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
        except lmdb.MapFullError:
            raise NoSpace(f"metadata database {self.path} reached its size limit") from None
        except lmdb.Error as e:
            if isinstance(e, lmdb.DiskError) or "No space" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
                raise NoSpace(f"no space left for metadata in {self.path}") from None
            raise

    def sync(self):
        self.env.sync(True)

    def close(self):
        if self.env is not None:
            _release_env(self._key)
            self.env = None
