"""The store and a data.mdb that ends early (issue 10, defect 5).

A file can end before LMDB's last page legitimately (pages freed in the
transaction that allocated them are never written; they are on the free
list) or because it was truncated (pages in use are gone: LMDB would SIGBUS
on them). Opening must tell the two apart without writing to the file and
without mapping a missing page: healthy short files open, read-only opens
never change them, and a truncated file is refused by name in both modes.

Damaged files are opened in a child process, so a SIGBUS fails the test
instead of killing the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time

import lmdb
import pytest

from vdisk.btree import LmdbNodeStore
from vdisk.btree import lmdbfile
from vdisk.errors import IntegrityError

PAGE = 4096


def _mdb(path) -> str:
    return os.path.join(path, "data.mdb")


def _digest(file) -> tuple[int, str]:
    with open(file, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.sha256(f.read()).hexdigest()


def _meta(file) -> lmdbfile.LmdbMeta:
    fd = os.open(file, os.O_RDONLY)
    try:
        return lmdbfile.read_meta(fd)
    finally:
        os.close(fd)


def _free(file) -> set[int]:
    fd = os.open(file, os.O_RDONLY)
    try:
        return lmdbfile.free_pages(fd, lmdbfile.read_meta(fd))
    finally:
        os.close(fd)


def _pages_in_use(file) -> set[int]:
    """Every page a tree reaches: the main DB, the named DBs in it, the free DB."""
    fd = os.open(file, os.O_RDONLY)
    try:
        meta = lmdbfile.read_meta(fd)
        roots = []

        def main_leaf(_key, data, flags):
            if flags & lmdbfile._F_SUBDATA:
                roots.append(struct.unpack_from("<Q", data, 40)[0])   # MDB_db.md_root
        used = lmdbfile.walk_pages(fd, meta.psize, meta.main_root, main_leaf)
        for root in roots:
            used |= lmdbfile.walk_pages(fd, meta.psize, root)
        return used | lmdbfile.walk_pages(fd, meta.psize, meta.free_root)
    finally:
        os.close(fd)


def _raw_short_file(path) -> int:
    """An LMDB file (written by LMDB alone) that ends before its last page, healthy.

    A value put and deleted in one transaction takes overflow pages at the end
    of the file that are freed before they are written. Returns the bytes up
    to its last page.
    """
    env = lmdb.open(str(path), max_dbs=4, subdir=True)
    try:
        nodes = env.open_db(b"nodes")
        env.open_db(b"meta")
        with env.begin(write=True, db=nodes) as txn:
            for i in range(30):
                txn.put(struct.pack(">Q", i), random.Random(i).randbytes(3000))
        with env.begin(write=True, db=nodes) as txn:
            txn.put(struct.pack(">Q", 999), b"x" * 40000)
            txn.delete(struct.pack(">Q", 999))
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    assert os.path.getsize(_mdb(path)) < need, "LMDB wrote the freed pages: the premise of this test is gone"
    return need


def _store_with_nodes(path, commits=40, seed=0) -> dict[int, bytes]:
    rng = random.Random(seed)
    want: dict[int, bytes] = {}
    store = LmdbNodeStore(path)
    try:
        for _ in range(commits):
            puts = {rng.randrange(400): rng.randbytes(rng.choice([50, 2000, 4080]))
                    for _ in range(rng.choice([1, 8, 60]))}
            dels = [n for n in rng.sample(sorted(want), min(len(want), rng.choice([0, 5, 40]))) if n not in puts]
            store.commit(puts, dels, {b"rec/%d" % rng.randrange(20): rng.randbytes(rng.randrange(1, 3000))})
            want.update(puts)
            for n in dels:
                del want[n]
    finally:
        store.close()
    return want


# ---------------------------------------------------------------- the page reader

def test_page_reader_accounts_for_every_page(scratch):
    """Pages in use and free pages partition the file: the reader reads LMDB's
    format right (else check_pages would judge from garbage)."""
    rng = random.Random(3)
    store = LmdbNodeStore(scratch)
    try:
        for c in range(60):
            puts = {rng.randrange(300): rng.randbytes(rng.choice([80, 3000, 4080, 9000]))
                    for _ in range(rng.choice([1, 10, 80]))}
            dels = [rng.randrange(300) for _ in range(rng.choice([0, 3, 60]))]
            record = {b"r%d" % rng.randrange(9): b"v" * rng.randrange(5000)}
            store.commit(puts, [d for d in dels if d not in puts], record)
            meta = _meta(_mdb(scratch))
            used, free = _pages_in_use(_mdb(scratch)), _free(_mdb(scratch))
            assert not used & free, f"commit {c}: pages both in use and free: {sorted(used & free)[:5]}"
            assert used | free | {0, 1} == set(range(meta.last_page + 1)), f"commit {c}"
    finally:
        store.close()


# ---------------------------------------------------------------- healthy short files

def test_commit_makes_the_file_reach_its_last_page(scratch):
    store = LmdbNodeStore(scratch)
    try:
        store.commit({1: b"a" * 100}, [], {})
        for i in range(5):
            # Put and deleted in one commit: LMDB frees the pages before writing them.
            store.commit({100 + i: b"x" * 40000}, [100 + i], {b"k": b"%d" % i})
            need = (store.env.info()["last_pgno"] + 1) * PAGE
            assert os.path.getsize(_mdb(scratch)) >= need
    finally:
        store.close()


def test_short_file_of_free_pages_opens_and_read_only_leaves_it_alone(scratch):
    need = _raw_short_file(scratch)
    before = _digest(_mdb(scratch))
    store = LmdbNodeStore(scratch, readonly=True, create=False)
    try:
        assert len(store.load(7)) == 3000 and store.load(999) is None
        assert sorted(store.node_ids()) == list(range(30))
    finally:
        store.close()
    assert _digest(_mdb(scratch)) == before
    store = LmdbNodeStore(scratch, create=False)
    try:
        assert os.path.getsize(_mdb(scratch)) == need      # the writer makes it whole
        store.commit({30: b"y" * 100}, [], {})
        assert store.load(30) == b"y" * 100
    finally:
        store.close()


# ---------------------------------------------------------------- damaged files

PROBE = r"""
import json, sys
from vdisk.btree import LmdbNodeStore
from vdisk.errors import VdiskError
out = []
for readonly in (True, False):
    try:
        s = LmdbNodeStore(sys.argv[1], readonly=readonly, create=False)
        try:
            ids = sorted(s.node_ids())
            got = {i: len(s.load(i)) for i in ids}
            if not readonly:
                s.commit({10**6: b"z"}, [], {})
        finally:
            s.close()
        out.append(["ok", len(got)])
    except VdiskError as e:
        out.append([type(e).__name__, str(e), e.exit_code])
print(json.dumps(out))
"""


def _probe(path):
    r = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"opening the store killed the process (rc {r.returncode}):\n{r.stderr[-2000:]}"
    return json.loads(r.stdout)


def test_truncated_file_is_refused_in_both_modes_and_left_alone(scratch):
    _store_with_nodes(scratch)
    file = _mdb(scratch)
    with open(file, "rb") as f:
        original = f.read()
    in_use = _pages_in_use(file)
    tested = 0
    for cut in (1, 2, 3, 5, 8, 13, 21, 34):
        size = len(original) - cut * PAGE
        if not any((p + 1) * PAGE > size for p in in_use):
            continue        # only free pages cut: healthy (tested above)
        tested += 1
        os.truncate(file, size)
        before = _digest(file)
        for res in _probe(scratch):
            assert res[0] == "IntegrityError", (cut, res)
            assert "truncated" in res[1] and "damaged" in res[1] and res[2] == 8, res
        assert _digest(file) == before, f"cut {cut}: a refused open changed the file"
        with open(file, "wb") as f:
            f.write(original)
    assert tested >= 5
    n = len(_store_nodes(scratch))
    assert _probe(scratch) == [["ok", n], ["ok", n]]


def _store_nodes(path):
    s = LmdbNodeStore(path, readonly=True, create=False)
    try:
        return list(s.node_ids())
    finally:
        s.close()


@pytest.mark.parametrize("size", [0, 100, PAGE, 2 * PAGE - 1])
def test_file_ending_inside_its_meta_pages_is_refused_and_never_grown(scratch, size):
    _store_with_nodes(scratch, commits=3)
    os.truncate(_mdb(scratch), size)
    for res in _probe(scratch):
        assert res[0] == "IntegrityError", res
        assert ("empty" if size == 0 else "inside its meta pages") in res[1], res
    assert os.path.getsize(_mdb(scratch)) == size


def test_a_file_that_is_not_lmdb_is_refused_and_left_alone(scratch):
    _store_with_nodes(scratch, commits=3)
    file = _mdb(scratch)
    with open(file, "r+b") as f:
        f.write(random.Random(1).randbytes(os.path.getsize(file)))
    before = _digest(file)
    for res in _probe(scratch):
        assert res[0] == "IntegrityError" and "metadata database" in res[1], res
    assert _digest(file) == before


def test_checking_beside_a_writer_has_no_false_alarm(scratch):
    """A writer that leaves short files all the time (LMDB alone, no covering)
    while another process checks: the check retries a view that moved."""
    _raw_short_file(scratch)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(scratch)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        checks = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and writer.poll() is None:
            lmdbfile.check_pages(_mdb(scratch))
            checks += 1
    finally:
        writer.kill()
        writer.wait()
    assert checks > 50


WRITER = r"""
import lmdb, struct, sys
env = lmdb.open(sys.argv[1], max_dbs=4, subdir=True, sync=False)
db = env.open_db(b"nodes")
print("ready", flush=True)
for i in range(200000):
    with env.begin(write=True, db=db) as txn:
        txn.put(struct.pack(">Q", 10**6 + i % 50), b"w" * (1000 + i % 7 * 3000))
        txn.put(struct.pack(">Q", 999), b"x" * 40000)
        txn.delete(struct.pack(">Q", 999))
"""


def test_missing_file_is_refused(scratch):
    with pytest.raises(IntegrityError, match="data.mdb is missing"):
        LmdbNodeStore(scratch, create=False)
