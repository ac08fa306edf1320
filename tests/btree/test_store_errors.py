"""No raw lmdb.Error leaves the store (issue 10, defect 1, the store's half).

A full file system is NoSpace; an I/O error is StorageError (exit 10, EIO)
naming the cause; after a failed meta-page write LMDB answers MDB_PANIC to
every call, which is StorageError too ("reopen the disk"), never "damaged,
run vdisk verify" (verify would find nothing). Damage stays IntegrityError.

Full and failing file systems are real where the machine allows it: a small
tmpfs, an ext4 image on a loop device, ext4 on a loop device whose backing
file lives on a full tmpfs (its writes fail with EIO), and lazyfs
(tests/torture/lazyfs.py) failing the fsync of the meta page alone, which is
LMDB's real MDB_PANIC. They need root or FUSE and skip otherwise. Seams (an
environment whose calls raise what LMDB raises) cover every store method
and every error class.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import shutil
import subprocess

import lmdb
import pytest

from vdisk.btree import LmdbNodeStore
from vdisk.errors import IntegrityError, NoSpace, StorageError, VdiskError

NODE = 4000


@contextlib.contextmanager
def _mounted(mnt, *args):
    os.makedirs(mnt, exist_ok=True)
    r = subprocess.run(["mount", *args, str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount {args}: {r.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _ext4_image(path, size):
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("no mkfs.ext4")
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True)


def _fill(store, start=0, batch=20, limit=2000):
    """Commit batches of nodes until a commit fails; returns (nodes committed, error)."""
    n = start
    while n < start + limit * batch:
        try:
            store.commit({i: i.to_bytes(8, "big") * (NODE // 8) for i in range(n, n + batch)}, [], {b"n": b"%d" % n})
        except VdiskError as e:
            return n, e
        n += batch
    raise AssertionError("the file system never filled up")


def _committed(store, n, batch=20):
    assert store.meta_get(b"n") == b"%d" % (n - batch)
    for i in (0, n // 2, n - 1):
        assert store.load(i) == i.to_bytes(8, "big") * (NODE // 8)


def test_map_size_limit_is_no_space(scratch):
    store = LmdbNodeStore(scratch, map_size=1 << 20)
    try:
        n, e = _fill(store)
        assert isinstance(e, NoSpace) and e.errno == errno.ENOSPC and "size limit" in str(e)
        _committed(store, n)
        store.commit({10**6: b"small"}, [], {})     # the store is still usable
        assert store.load(10**6) == b"small"
    finally:
        store.close()


def test_full_tmpfs_is_no_space(tmp_path):
    with _mounted(tmp_path / "mnt", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as mnt:
        store = LmdbNodeStore(os.path.join(mnt, "m"))
        try:
            n, e = _fill(store)
            assert type(e) is NoSpace and e.errno == errno.ENOSPC, e
            _committed(store, n)
        finally:
            store.close()


def test_full_ext4_is_no_space(tmp_path):
    """ext4 gives LMDB a short write, which LMDB reports as EIO: the store
    tells a full file system from a failing one."""
    _ext4_image(tmp_path / "img", 16 << 20)
    with _mounted(tmp_path / "mnt", "-o", "loop", str(tmp_path / "img")) as mnt:
        store = LmdbNodeStore(os.path.join(mnt, "m"))
        try:
            n, e = _fill(store, batch=37)
            assert type(e) is NoSpace and e.errno == errno.ENOSPC, e
            assert "file system is full" in str(e) or "No space" in str(e) or "no space" in str(e)
        finally:
            store.close()


def test_failing_device_is_a_storage_error(tmp_path):
    """ext4 on a loop device whose backing file cannot grow: writes fail with
    EIO while the file system still has room."""
    with _mounted(tmp_path / "back", "-t", "tmpfs", "-o", "size=6m", "tmpfs") as back:
        img = os.path.join(back, "img")
        _ext4_image(img, 64 << 20)
        with _mounted(tmp_path / "mnt", "-o", "loop,errors=continue", img) as mnt:
            store = LmdbNodeStore(os.path.join(mnt, "m"))
            try:
                n, e = _fill(store, batch=50)
                assert type(e) is StorageError, e
                assert e.errno == errno.EIO and e.exit_code == 10
                assert "Input/output error" in str(e) or "Read-only file system" in str(e), e
                for i in range(5):           # later writes may fail too, never raw
                    try:
                        store.commit({10**6 + j: b"x" * NODE for j in range(50)}, [], {})
                    except (StorageError, NoSpace):
                        pass
                try:
                    _committed(store, n, 50)     # what was committed still reads, or says why not
                except StorageError:
                    pass
            finally:
                store.close()


def _lazyfs():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torture", "lazyfs.py")
    if not os.path.exists(path):
        pytest.skip("no tests/torture/lazyfs.py")
    spec = importlib.util.spec_from_file_location("lazyfs_for_store_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lacking = module.missing()
    if lacking:
        pytest.skip(f"lazyfs needs {', '.join(lacking)}")
    return module


def test_failed_meta_page_write_is_a_storage_error_until_reopened(tmp_path):
    """LMDB's own MDB_PANIC: a commit's data pages sync, then the meta page's
    write fails (its O_DSYNC descriptor turns it into the next fsync)."""
    lz = _lazyfs()
    m = lz.LazyMount(str(tmp_path / "backing"), str(tmp_path / "mnt"), str(tmp_path / "lazyfs.sock"))
    m.mount()
    try:
        path = os.path.join(m.mountpoint, "m")
        store = LmdbNodeStore(path)
        try:
            for i in range(5):
                store.commit({i: b"a" * NODE}, [], {b"n": b"%d" % i})
            rule = m.fault("fsync", "*data.mdb", "eio", skip=1, count=1)
            with pytest.raises(StorageError, match="Input/output error"):
                store.commit({100: b"b" * NODE}, [], {b"n": b"x"})
            assert m.fired(rule) == 1
            calls = (lambda: store.load(1), lambda: store.meta_get(b"n"), lambda: list(store.node_ids()),
                     store.current_view, lambda: store.commit({101: b"c"}, [], {}))
            for call in calls:
                with pytest.raises(StorageError) as ei:
                    call()
                msg = str(ei.value)
                assert "failed an I/O earlier (" in msg and "Input/output error" in msg and "reopen" in msg, msg
                assert "damaged" not in msg and ei.value.exit_code == 10
        finally:
            store.close()
        store = LmdbNodeStore(path, create=False)     # reopened: one whole commit or the other
        try:
            assert store.load(1) == b"a" * NODE
            n = store.meta_get(b"n")
            assert n in (b"4", b"x") and (store.load(100) is not None) == (n == b"x")
            store.commit({102: b"d"}, [], {})
            assert store.load(102) == b"d"
        finally:
            store.close()
    finally:
        m.close()


# ---------------------------------------------------------------- seams

def _lmdb_error(cls, what, code):
    e = cls(f"{what}: {os.strerror(code) if code > 0 else 'LMDB error'}")
    e.code = code
    return e


class _FailingCommit:
    """A write transaction whose commit fails as LMDB's does on an I/O error."""

    def __init__(self, txn, error):
        self.txn, self.error = txn, error

    def __enter__(self):
        return self.txn.__enter__()

    def __exit__(self, *exc):
        self.txn.abort()
        raise self.error


class _Env:
    """The store's environment with chosen failures."""

    def __init__(self, env, commit_error=None, begin_error=None, get_error=None):
        self._env, self.commit_error, self.begin_error, self.get_error = env, commit_error, begin_error, get_error

    def begin(self, **kw):
        if self.begin_error is not None:
            raise self.begin_error
        txn = self._env.begin(**kw)
        if kw.get("write") and self.commit_error is not None:
            return _FailingCommit(txn, self.commit_error)
        if self.get_error is not None:
            return _FailingGet(txn, self.get_error)
        return txn

    def __getattr__(self, name):
        return getattr(self._env, name)


class _FailingGet:
    def __init__(self, txn, error):
        self.txn, self.error = txn, error

    def __enter__(self):
        self.txn.__enter__()
        return self

    def __exit__(self, *exc):
        self.txn.abort()

    def get(self, *a, **kw):
        raise self.error

    def __getattr__(self, name):
        return getattr(self.txn, name)


PANIC = "MDB_PANIC: Update of meta page failed or environment had fatal error"


def test_after_a_failed_meta_write_every_call_is_a_storage_error(scratch):
    store = LmdbNodeStore(scratch)
    real = store.env
    try:
        store.commit({1: b"a" * 100}, [], {b"k": b"v"})
        store.env = _Env(real, commit_error=_lmdb_error(lmdb.Error, "mdb_txn_commit", errno.EIO))
        with pytest.raises(StorageError, match="Input/output error") as ei:
            store.commit({2: b"b"}, [], {})
        assert ei.value.errno == errno.EIO and ei.value.exit_code == 10
        assert not isinstance(ei.value, IntegrityError)
        # LMDB set its fatal flag: every later call is MDB_PANIC.
        store.env = _Env(real, begin_error=_lmdb_error(lmdb.PanicError, "mdb_txn_begin", -30795))
        calls = {
            "load": lambda: store.load(1), "meta_get": lambda: store.meta_get(b"k"),
            "meta_items": lambda: store.meta_items(b""), "node_ids": lambda: list(store.node_ids()),
            "current_view": store.current_view, "read_view": lambda: store.read_view().__enter__(),
            "commit": lambda: store.commit({3: b"c"}, [], {}),
        }
        for name, call in calls.items():
            with pytest.raises(StorageError) as ei:
                call()
            msg = str(ei.value)
            assert "failed an I/O earlier" in msg and "reopen" in msg, (name, msg)
            assert "Input/output error" in msg, (name, msg)     # the cause, not just "MDB_PANIC"
            assert "damaged" not in msg and "verify" not in msg, (name, msg)
        # A second user in this process cannot pick up the failed environment.
        with pytest.raises(StorageError, match="close every user"):
            LmdbNodeStore(scratch, readonly=True)
    finally:
        store.env = real
        store.close()
    store = LmdbNodeStore(scratch)       # reopened: the last commit, whole
    try:
        assert store.load(1) == b"a" * 100 and store.load(2) is None
    finally:
        store.close()


def test_panic_without_a_known_cause_is_still_a_storage_error(scratch):
    store = LmdbNodeStore(scratch)
    real = store.env
    try:
        store.env = _Env(real, begin_error=_lmdb_error(lmdb.PanicError, "mdb_txn_begin", -30795))
        with pytest.raises(StorageError, match="failed an I/O earlier.*reopen the disk"):
            store.load(1)
    finally:
        store.env = real
        store.close()


@pytest.mark.parametrize("error, kind", [
    (lambda: _lmdb_error(lmdb.Error, "mdb_get", errno.EIO), StorageError),
    (lambda: _lmdb_error(lmdb.CorruptedError, "mdb_get", -30796), IntegrityError),
    (lambda: _lmdb_error(lmdb.PageNotFoundError, "mdb_get", -30797), IntegrityError),
])
def test_read_errors(scratch, error, kind):
    store = LmdbNodeStore(scratch)
    real = store.env
    try:
        store.commit({1: b"a"}, [], {b"k": b"v"})
        store.env = _Env(real, get_error=error())
        for call in (lambda: store.load(1), lambda: store.meta_get(b"k")):
            with pytest.raises(kind) as ei:
                call()
            assert type(ei.value) is kind
            if kind is IntegrityError:
                assert "damaged" in str(ei.value) and "vdisk verify" in str(ei.value)
            else:
                assert "Input/output error" in str(ei.value) and "damaged" not in str(ei.value)
    finally:
        store.env = real
        store.close()


@pytest.mark.parametrize("error, kind", [
    (lambda: _lmdb_error(lmdb.DiskError, "mdb_txn_commit", errno.ENOSPC), NoSpace),
    (lambda: _lmdb_error(lmdb.MapFullError, "mdb_put", -30792), NoSpace),
    (lambda: _lmdb_error(lmdb.Error, "mdb_txn_commit", errno.EIO), StorageError),
    (lambda: _lmdb_error(lmdb.Error, "mdb_txn_commit", errno.EROFS), StorageError),
    (lambda: _lmdb_error(lmdb.CorruptedError, "mdb_put", -30796), IntegrityError),
    (lambda: _lmdb_error(lmdb.BadTxnError, "mdb_put", -30782), StorageError),
])
def test_commit_errors(scratch, error, kind):
    store = LmdbNodeStore(scratch)
    real = store.env
    try:
        store.commit({1: b"a"}, [], {})
        store.env = _Env(real, commit_error=error())
        with pytest.raises(kind) as ei:
            store.commit({2: b"b"}, [], {})
        assert type(ei.value) is kind, ei.value
        store.env = real
        assert store.load(1) == b"a" and store.load(2) is None     # nothing half-committed
    finally:
        store.env = real
        store.close()
