"""A truncated meta/data.mdb through the command line (issue 10, defect 5).

Reported: with data.mdb truncated, ``vdisk info`` said damaged (exit 8) but
``vdisk snapshot create`` succeeded; with a zero-length one, a failing
command still grew the file. Now every command refuses a file that lost
pages in use, by name, and none changes it; a file that lost only free pages
(which LMDB itself can leave) is healthy. Commands run in child processes:
a SIGBUS fails the test instead of killing the runner.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys

import pytest

from vdisk import Disk
from vdisk.btree import lmdbfile

PAGE = 4096


def _vdisk(*args):
    r = subprocess.run([sys.executable, "-c", "from vdisk.cli.main import main; main()", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode >= 0, f"vdisk {args} was killed by signal {-r.returncode}:\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _mdb(path):
    return os.path.join(path, "meta", "data.mdb")


def _digest(file):
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _pages_in_use(file) -> set[int]:
    fd = os.open(file, os.O_RDONLY)
    try:
        meta = lmdbfile.read_meta(fd)
        roots = []

        def main_leaf(_key, data, flags):
            if flags & lmdbfile._F_SUBDATA:
                roots.append(struct.unpack_from("<Q", data, 40)[0])
        used = lmdbfile.walk_pages(fd, meta.psize, meta.main_root, main_leaf)
        for root in roots:
            used |= lmdbfile.walk_pages(fd, meta.psize, root)
        return used | lmdbfile.walk_pages(fd, meta.psize, meta.free_root)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def tail_of_leaves(tmp_path_factory):
    """A closed disk whose data.mdb ends with B+tree leaves that a snapshot
    does not touch: small commits first, then one large write grows the file."""
    path = str(tmp_path_factory.mktemp("meta-file") / "disk")
    rng = random.Random(1)
    with Disk.create(path, 64 << 20) as d:
        for _ in range(40):
            d.write(rng.randrange(64) * PAGE, b"y" * PAGE)
            d.flush()
        for i in range(3000):
            d.write(rng.randrange(16000) * PAGE, bytes([i % 250 + 1]) * PAGE)
    return path


def _copy_cut(src, dst, cut_pages):
    shutil.copytree(src, dst)
    size = os.path.getsize(_mdb(dst)) - cut_pages * PAGE
    os.truncate(_mdb(dst), size)
    return size


def test_truncated_metadata_is_refused_by_every_command_and_never_changed(tail_of_leaves, tmp_path):
    in_use = _pages_in_use(_mdb(tail_of_leaves))
    full = os.path.getsize(_mdb(tail_of_leaves))
    cuts = [c for c in (3, 4, 8, 16) if any((p + 1) * PAGE > full - c * PAGE for p in in_use)]
    assert len(cuts) >= 3
    for cut in cuts:
        path = str(tmp_path / f"cut{cut}")
        _copy_cut(tail_of_leaves, path, cut)
        before = _digest(_mdb(path))
        for args, code in ((("snapshot", "create", path, "s"), 8), (("info", path), 8),
                           (("verify", path), 8), (("resize", path, "128M"), 8)):
            r = _vdisk(*args)
            assert r.returncode == code, (cut, args, r.returncode, r.stdout, r.stderr)
            assert _digest(_mdb(path)) == before, f"cut {cut}: {args[0]} changed data.mdb"
            assert "truncated" in r.stderr and "data.mdb" in r.stderr, (cut, args, r.stderr)


def _leave_free_pages_unwritten(path):
    """What LMDB itself sometimes does: a value put and deleted in one
    transaction takes pages at the end of the file that are freed before
    they are written, so the file ends before its last page."""
    import lmdb
    env = lmdb.open(os.path.join(path, "meta"), max_dbs=4, subdir=True)
    try:
        nodes = env.open_db(b"nodes", create=False)
        with env.begin(write=True, db=nodes) as txn:
            txn.put(struct.pack(">Q", 1 << 62), b"x" * 40000)
            txn.delete(struct.pack(">Q", 1 << 62))
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    assert os.path.getsize(_mdb(path)) < need, "LMDB wrote the freed pages: the premise of this test is gone"


def test_a_file_short_of_free_pages_only_is_healthy_and_read_only_commands_leave_it_alone(tail_of_leaves, tmp_path):
    path = str(tmp_path / "short")
    shutil.copytree(tail_of_leaves, path)
    _leave_free_pages_unwritten(path)
    before = _digest(_mdb(path))
    for args in (("info", path), ("verify", path), ("snapshot", "list", path)):
        r = _vdisk(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert _digest(_mdb(path)) == before, f"{args[0]} changed data.mdb"
    assert _vdisk("snapshot", "create", path, "s").returncode == 0
    assert _vdisk("verify", path).returncode == 0


def test_empty_metadata_file_is_refused_and_never_grown(tail_of_leaves, tmp_path):
    path = str(tmp_path / "empty")
    shutil.copytree(tail_of_leaves, path)
    os.truncate(_mdb(path), 0)
    for args, code in ((("snapshot", "create", path, "s"), 8), (("info", path), 8), (("verify", path), 8),
                       (("snapshot", "list", path), 8)):
        r = _vdisk(*args)
        assert os.path.getsize(_mdb(path)) == 0, f"{args[0]} grew the empty data.mdb"
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "data.mdb is empty" in r.stderr, (args, r.stderr)
