"""Wrong requests, damaged containers and a full file system.

(Over 500 lines: one table-driven case per kind of bad input, read as one
catalogue; the helpers it shares are in util.py and accounting.py.)

Every failure must be a :class:`VdiskError` subclass with the right errno and
a message that says what is wrong, and must leave the disk as it was: never a
raw ``KeyError``/``lmdb.Error`` traceback, never a crash of the process,
never a half-done change.

Damaged containers are opened in a child process: LMDB maps its file, and a
damaged one could kill the process (SIGBUS), which must show up as a failing
test rather than take the test runner down.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from vdisk import Disk
from vdisk import format as fmt
from vdisk.btree import store
from vdisk.disk import MAX_DISK_SIZE
from vdisk.errors import (AlreadyExists, Busy, ChecksumMismatch, DiskFailed, InvalidArgument, NoSpace, NotFound,
                          ReadOnly)

from .accounting import assert_consistent, consistency
from .util import pattern, run_child, settled

BS = 4096
MiB = 1 << 20


def fingerprint(disk):
    """Everything a failed request must leave unchanged."""
    return (disk.read(0, disk.size), disk.state.vba_next, disk.alloc.end, len(settled(disk)._lba.tree),
            len(disk._vba.tree), os.path.getsize(os.path.join(disk.path, "data")), disk.size,
            [s.name for s in disk.snapshots(exclusive=False)])


# ---------------------------------------------------------------- I/O range


@pytest.mark.parametrize("op, offset, length", [
    ("read", MiB - 1, 2), ("read", MiB, 1), ("read", -1, 1), ("read", 0, -1), ("read", 0, MiB + 1),
    ("write", MiB - 1, 2), ("write", MiB, 1), ("write", -BS, BS), ("write", 2 * MiB, BS),
    ("write", MiB - BS, 2 * BS),
    ("zero", MiB - 1, 2), ("zero", -1, 2), ("zero", 0, MiB + BS),
    ("trim", MiB - BS, 2 * BS), ("trim", -BS, BS), ("trim", 0, -1),
    ("block_status", MiB - 1, 2), ("block_status", -1, 1),
])
def test_io_outside_the_disk_is_refused(disk, op, offset, length):
    disk.write(MiB - 3 * BS, pattern(1, 3 * BS))
    disk.flush()
    before = fingerprint(disk)
    with pytest.raises(InvalidArgument) as ei:
        if op == "write":
            disk.write(offset, b"x" * max(length, 0))
        else:
            getattr(disk, op)(offset, length)
    assert ei.value.errno == errno.EINVAL
    assert "outside the disk" in str(ei.value)
    assert fingerprint(disk) == before
    assert not disk.alloc.pending
    assert_consistent(disk)


def test_io_up_to_the_end_is_fine(disk):
    disk.write(MiB - 1, b"z")
    assert disk.read(MiB - 1, 1) == b"z"
    assert disk.read(MiB, 0) == b""
    disk.write(MiB, b"")
    disk.zero(MiB - 1, 1)
    assert disk.read(MiB - BS, BS) == bytes(BS)


def test_snapshot_view_is_read_only(disk):
    disk.write(0, pattern(1, 2 * BS))
    disk.create_snapshot("s")
    view = disk.open_snapshot("s")
    before = fingerprint(disk)
    for call in (lambda: view.write(0, b"x"), lambda: view.trim(0, BS), lambda: view.zero(0, BS)):
        with pytest.raises(ReadOnly) as ei:
            call()
        assert ei.value.errno == errno.EROFS
        assert "'s'" in str(ei.value)
    assert view.read(0, 2 * BS) == pattern(1, 2 * BS)
    assert fingerprint(disk) == before


def test_read_only_disk_refuses_changes(make_disk, disk_path):
    d = make_disk()
    d.write(0, pattern(1, BS))
    d.create_snapshot("s")
    d.close()
    with Disk.open(disk_path, readonly=True) as ro:
        for call in (lambda: ro.write(0, b"x"), lambda: ro.zero(0, BS), lambda: ro.trim(0, BS),
                     lambda: ro.create_snapshot("t"), lambda: ro.revert("s"),
                     lambda: ro.delete_snapshot("s"), lambda: ro.resize(2 * MiB)):
            with pytest.raises(ReadOnly) as ei:
                call()
            assert ei.value.errno == errno.EROFS
        ro.flush()
        assert ro.read(0, BS) == pattern(1, BS)
    with Disk.open(disk_path) as d:
        assert [s.name for s in d.snapshots()] == ["s"]
        assert d.size == MiB
        assert_consistent(d)


def test_closed_disk_refuses_io(make_disk):
    d = make_disk()
    d.close()
    with pytest.raises(InvalidArgument):
        d.write(0, b"x")
    with pytest.raises(InvalidArgument):
        d.flush()
    d.close()                                # twice is fine


def test_resize_rules(disk):
    disk.write(0, pattern(1, BS))
    for bad in (MiB - BS, MiB + 1, MAX_DISK_SIZE + BS):
        with pytest.raises(InvalidArgument):
            disk.resize(bad)
    assert disk.size == MiB
    disk.resize(2 * MiB)
    assert disk.read(MiB, MiB) == bytes(MiB)
    assert disk.read(0, BS) == pattern(1, BS)


# ---------------------------------------------------------------- create


@pytest.mark.parametrize("size, block_size", [
    (0, 4096), (-4096, 4096), (4095, 4096), (1000, 512), (MiB, 0), (MiB, 256), (MiB, 3000),
    (MiB, 4097), (MiB, 131072), (MAX_DISK_SIZE + 4096, 4096), (MiB + 512, 4096),
])
def test_create_refuses_bad_sizes(disk_path, size, block_size):
    with pytest.raises(InvalidArgument) as ei:
        Disk.create(disk_path, size, block_size)
    assert ei.value.errno == errno.EINVAL
    assert "size" in str(ei.value)
    assert not os.path.exists(disk_path)


@pytest.mark.parametrize("block_size", [512, 1024, 65536])
def test_create_accepts_every_power_of_two_block_size(disk_path, block_size):
    with Disk.create(disk_path, 4 * 65536, block_size) as d:
        d.write(block_size - 1, b"ab")
        assert d.read(block_size - 2, 4) == b"\0ab\0"
        assert d.info()["block_size"] == block_size


def test_create_refuses_existing_path_and_missing_parent(disk, disk_path, scratch):
    with pytest.raises(AlreadyExists):
        Disk.create(disk_path, MiB)
    with pytest.raises(NotFound):
        Disk.create(os.path.join(scratch, "no", "such", "dir"), MiB)
    with pytest.raises(NotFound):
        Disk.open(os.path.join(scratch, "nothing-here"))
    # The refused create did not touch the existing disk.
    disk.write(0, b"x")
    assert disk.read(0, 1) == b"x"


# ---------------------------------------------------------------- snapshots


@pytest.mark.parametrize("name", [
    "", "a" * 129, "é" * 65, "a/b", " a", "/", "snap\0", "-a", ".a", "~a", "a\nb", None, 5, b"bytes",
    "ab\n",
])
def test_bad_snapshot_names(disk, name):
    disk.write(0, b"x")
    before = fingerprint(disk)
    with pytest.raises(InvalidArgument) as ei:
        disk.create_snapshot(name)
    assert ei.value.errno == errno.EINVAL
    assert "snapshot name" in str(ei.value)
    assert fingerprint(disk) == before


def test_snapshot_name_limits_and_duplicates(disk):
    longest = "a" * 128
    disk.create_snapshot(longest)
    disk.create_snapshot("A.b_c-9")
    before = fingerprint(disk)
    with pytest.raises(AlreadyExists) as ei:
        disk.create_snapshot(longest)
    assert ei.value.errno == errno.EEXIST
    assert fingerprint(disk) == before
    assert sorted(s.name for s in disk.snapshots()) == ["A.b_c-9", longest]


def test_snapshots_are_listed_oldest_first(disk):
    disk.write(0, b"x")
    for name in ("c", "b", "a"):
        disk.create_snapshot(name)
    assert [s.name for s in disk.snapshots()] == ["c", "b", "a"]


def test_unknown_snapshot(disk):
    disk.create_snapshot("there")
    before = fingerprint(disk)
    for call in (disk.open_snapshot, disk.revert, disk.delete_snapshot):
        with pytest.raises(NotFound) as ei:
            call("missing")
        assert ei.value.errno == errno.ENOENT
        assert "'missing'" in str(ei.value)
    assert fingerprint(disk) == before


def test_view_of_deleted_snapshot(disk):
    disk.write(0, b"x")
    disk.create_snapshot("s")
    view = disk.open_snapshot("s")
    disk.delete_snapshot("s")
    with pytest.raises(NotFound):
        view.read(0, 1)


# ---------------------------------------------------------------- locking


def test_second_writer_is_busy(disk, disk_path):
    with pytest.raises(Busy) as ei:
        Disk.open(disk_path)
    assert ei.value.errno == errno.EBUSY
    assert f"in use by PID {os.getpid()}" in str(ei.value)
    # ... from another process too, naming this one.
    r = run_child("import sys\nfrom vdisk import Disk\nfrom vdisk.errors import Busy\n"
                  "try:\n    Disk.open(sys.argv[1])\nexcept Busy as e:\n    print(e)\n", disk_path)
    assert r.returncode == 0, r.stderr
    assert f"in use by PID {os.getpid()}" in r.stdout
    # The refused opener did not disturb the writer, and close releases the lock.
    disk.write(0, b"x")
    disk.close()
    with Disk.open(disk_path) as again:
        assert again.read(0, 1) == b"x"


READER = r"""
import sys
from vdisk import Disk
from vdisk.errors import VdiskError
d = Disk.open(sys.argv[1], readonly=True)
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "read":
            out = d.read(int(args[0]), int(args[1])).hex()
        elif cmd == "snaps":
            out = ",".join(s.name for s in d.snapshots(exclusive=False))
        elif cmd == "size":
            out = str(d.size)
    except VdiskError as e:
        out = f"ERR {type(e).__name__}: {e}"
    print(out, flush=True)
"""


def test_read_only_opener_beside_a_writer_sees_commits(disk, disk_path):
    disk.write(0, pattern(1, 2 * BS))
    disk.flush()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    reader = subprocess.Popen([sys.executable, "-c", READER, disk_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)

    def ask(line):
        reader.stdin.write(line + "\n")
        reader.stdin.flush()
        return reader.stdout.readline().strip()

    try:
        assert bytes.fromhex(ask(f"read 0 {2 * BS}")) == pattern(1, 2 * BS)
        disk.write(0, pattern(2, BS))        # not flushed: invisible
        assert bytes.fromhex(ask(f"read 0 {2 * BS}")) == pattern(1, 2 * BS)
        disk.flush()
        assert bytes.fromhex(ask(f"read 0 {2 * BS}")) == pattern(2, BS) + pattern(1, 2 * BS)[BS:]
        disk.create_snapshot("s1")
        disk.trim(0, BS)
        disk.write(MiB - 1, b"\x07")
        disk.resize(2 * MiB)
        assert ask("snaps") == "s1"
        assert bytes.fromhex(ask(f"read {MiB - 1} 2")) == b"\x07\0"
        assert ask("size") == str(2 * MiB)
        assert bytes.fromhex(ask(f"read 0 {BS}")) == bytes(BS)
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    assert reader.returncode == 0


def test_read_only_opener_follows_a_resize(disk, disk_path):
    disk.write(0, b"x")
    disk.flush()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    reader = subprocess.Popen([sys.executable, "-c", READER, disk_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        reader.stdin.write("read 0 1\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == b"x".hex()
        disk.resize(2 * MiB)
        reader.stdin.write(f"read {MiB} 1\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "00"
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)


# ---------------------------------------------------------------- damaged containers

PROBE = r"""
import hashlib, json, sys
from vdisk import Disk
from vdisk.errors import VdiskError
res = []
for attempt in range(int(sys.argv[2])):
    try:
        d = Disk.open(sys.argv[1])
        try:
            data = hashlib.sha256(d.read(0, d.size)).hexdigest()
            snaps = {s.name: hashlib.sha256(d.open_snapshot(s.name).read(0, s.size)).hexdigest()
                     for s in d.snapshots()}
        finally:
            d.close()
        res.append(["ok", data, snaps])
    except VdiskError as e:
        res.append(["vdisk", type(e).__name__, str(e), e.errno, e.exit_code])
    except BaseException as e:
        res.append(["raw", type(e).__name__, str(e)])
print(json.dumps(res))
"""


def probe(path, attempts=1):
    r = run_child(PROBE, path, attempts)
    assert r.returncode == 0, f"opening the damaged disk killed the process (rc {r.returncode}):\n{r.stderr[-2000:]}"
    return json.loads(r.stdout)


@pytest.fixture
def filled(disk_path):
    """A closed disk with data and a snapshot; returns its path and content hashes."""
    import hashlib
    with Disk.create(disk_path, 4 * MiB) as d:
        d.write(0, pattern(1, 3 * MiB))
        d.create_snapshot("s")
        d.write(MiB, pattern(2, MiB))
        content = hashlib.sha256(d.read(0, d.size)).hexdigest()
        snap = hashlib.sha256(d.open_snapshot("s").read(0, d.size)).hexdigest()
    return disk_path, content, snap


def _mdb(path):
    return os.path.join(path, "meta", "data.mdb")


def _edit_meta(path, fn):
    """Change the container's records with the B+tree layer alone (no Disk
    object, which would write its own state back when closed)."""
    from vdisk.btree import Forest, LmdbNodeStore
    store = LmdbNodeStore(os.path.join(path, "meta"), create=False)
    try:
        forest = Forest(store)
        fn(forest)
        forest.commit()
    finally:
        store.close()


def _lmdb_put_node_garbage(path):
    import lmdb
    with Disk.open(path) as d:
        root = d.forest.tree("lba").root
    env = lmdb.open(os.path.join(path, "meta"), max_dbs=4, subdir=True)
    try:
        db = env.open_db(b"nodes", create=False)
        with env.begin(write=True) as txn:
            raw = bytearray(txn.get(root.to_bytes(8, "big"), db=db))
            raw[len(raw) // 2] ^= 0xFF
            txn.put(root.to_bytes(8, "big"), bytes(raw), db=db)
    finally:
        env.close()


def _garbage(path, start):
    size = os.path.getsize(_mdb(path))
    with open(_mdb(path), "r+b") as f:
        f.seek(start)
        f.write(random.Random(7).randbytes(size - start))


DAMAGE = {
    "no meta dir": (lambda p: shutil.rmtree(os.path.join(p, "meta")), "IntegrityError", "meta"),
    "no data file": (lambda p: os.unlink(os.path.join(p, "data")), "IntegrityError", "data file"),
    "no data.mdb": (lambda p: os.unlink(_mdb(p)), "IntegrityError", "data.mdb is missing"),
    "empty data.mdb": (lambda p: os.truncate(_mdb(p), 0), "IntegrityError", "configuration record"),
    "garbage data.mdb": (lambda p: _garbage(p, 0), "IntegrityError", "metadata database"),
    "truncated data.mdb": (lambda p: os.truncate(_mdb(p), os.path.getsize(_mdb(p)) // 2 // 4096 * 4096),
                           "IntegrityError", "metadata"),
    "garbage after the meta pages": (lambda p: _garbage(p, 2 * 4096), "IntegrityError", "metadata"),
    "garbage in the data pages": (lambda p: _garbage(p, 4 * 4096), "IntegrityError", "metadata"),
    "newer config version": (lambda p: _edit_meta(p, lambda f: f.meta_put(b"disk/config", fmt.encode_config(
        fmt.Config(4096, 4 * MiB, 0, version=fmt.CONTAINER_VERSION + 1)))), "UnsupportedVersion", "newer vdisk"),
    "no config record": (lambda p: _edit_meta(p, lambda f: f.meta_put(b"disk/config", None)),
                         "IntegrityError", "no configuration record"),
    "bad config magic": (lambda p: _edit_meta(p, lambda f: f.meta_put(b"disk/config", b"X" * 32)),
                         "IntegrityError", "magic"),
    "damaged state record": (lambda p: _edit_meta(p, lambda f: f.meta_put(b"disk/state", b"\1\0")),
                             "IntegrityError", "running point record"),
    "missing csum tree": (lambda p: _edit_meta(p, lambda f: f.drop_tree("csum")), "IntegrityError", "'csum'"),
    "corrupt lba root node": (_lmdb_put_node_garbage, "CorruptNode", "metadata node"),
    "truncated seq counter": (lambda p: _edit_raw_meta(p, b"counter/seq", b"\1\2\3"), "IntegrityError", "counter"),
    "non-UTF-8 parent name": (lambda p: _edit_raw_meta(p, b"disk/state", _state_with_name(b"\xff\xfe")),
                              "IntegrityError", "not UTF-8"),
    "absurd block size": (lambda p: _edit_raw_meta(p, b"disk/config", fmt.encode_config(
        fmt.Config(1 << 30, 1 << 30, 0))), "IntegrityError", "block size"),
}


def _edit_raw_meta(path, key, value):
    import lmdb
    env = lmdb.open(os.path.join(path, "meta"), max_dbs=4, subdir=True)
    try:
        db = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=db) as txn:
            assert txn.get(key) is not None, f"no {key!r} in this container"
            txn.put(key, value)
    finally:
        env.close()


def _state_with_name(raw: bytes) -> bytes:
    return fmt.encode_state(fmt.State(10, 10, 10, None))[:-2] + len(raw).to_bytes(2, "little") + raw

@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_container(filled, case):
    path, _content, _snap = filled
    damage, kind, words = DAMAGE[case]
    damage(path)
    (res,) = probe(path)
    assert res[0] == "vdisk", f"{case}: expected a VdiskError, got {res}"
    _, name, message, err, code = res
    assert name == kind, res
    assert words in message, res
    assert err == errno.EIO and code in (8, 9)


REOPEN = r"""
import os, sys
from vdisk import Disk
from vdisk.errors import VdiskError
fds = len(os.listdir("/proc/self/fd"))
for attempt in range(3):
    try:
        Disk.open(sys.argv[1]).close()
        print("opened")
    except VdiskError as e:
        print(type(e).__name__, e)
print("fds", len(os.listdir("/proc/self/fd")) - fds)
"""


def test_failed_open_leaves_no_trace_in_the_process(filled):
    path = filled[0]
    DAMAGE["newer config version"][0](path)
    r = run_child(REOPEN, path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("UnsupportedVersion ") for line in lines[:3]), lines
    assert lines[3] == "fds 0", lines


def test_undamaged_probe_reads_everything(filled):
    path, content, snap = filled
    assert probe(path, attempts=2) == [["ok", content, {"s": snap}]] * 2


def test_checksum_mismatch_names_the_block(make_disk, disk_path):
    d = make_disk(MiB)
    d.write(0, pattern(1, 16 * BS))
    d.flush()
    (_, vba, _), = settled(d)._lba.pieces(5, 1)
    (_, pba, _), = d._vba.pieces(vba, 1)
    d.close()
    fd = os.open(os.path.join(disk_path, "data"), os.O_RDWR)
    try:
        os.pwrite(fd, b"\xde\xad", pba * BS + 100)
    finally:
        os.close(fd)
    with Disk.open(disk_path) as d:
        for offset, length in ((5 * BS, BS), (5 * BS + 100, 1), (0, 16 * BS), (5 * BS - 1, 2)):
            with pytest.raises(ChecksumMismatch) as ei:
                d.read(offset, length)
            assert ei.value.errno == errno.EIO
            assert "LBA 5 " in str(ei.value) and str(5 * BS) in str(ei.value)
        want = pattern(1, 16 * BS)
        assert d.read(0, 5 * BS) == want[:5 * BS]
        assert d.read(6 * BS, 10 * BS) == want[6 * BS:]
        assert [e.allocated for e in d.block_status(0, MiB)] == [True, False]
        # Rewriting the block heals it; a partial rewrite cannot (it needs the old data).
        with pytest.raises(ChecksumMismatch):
            d.write(5 * BS + 10, b"x")
        d.write(5 * BS, pattern(9, BS))
        assert d.read(5 * BS, BS) == pattern(9, BS)
        assert_consistent(d)


# ---------------------------------------------------------------- full file system


@pytest.fixture
def small_fs(scratch):
    mnt = os.path.join(scratch, "mnt")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


FILL = r"""
import os, random, sys
from vdisk import Disk
from vdisk.errors import NoSpace
path = sys.argv[1]
size, chunk = 64 << 20, 256 << 10
rng = random.Random(5)
d = Disk.create(path, size)
model = bytearray(size)
committed = bytes(size)
i = 0
try:
    while i < 1000:
        off = (i * chunk) % size
        data = rng.randbytes(chunk)
        where = "write"
        d.write(off, data)
        model[off:off + chunk] = data
        where = "flush"
        d.flush()
        committed = bytes(model)
        i += 1
except NoSpace as e:
    print("nospace", where, i, e.errno, e, flush=True)
else:
    print("never full", flush=True)
    sys.exit(1)
ok = d.read(0, size) == committed
print("readable", ok, flush=True)
d.close()
"""


@pytest.mark.slow
def test_no_space_for_data(small_fs):
    path = os.path.join(small_fs, "disk")
    r = run_child(FILL, path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("nospace") and f" {errno.ENOSPC} " in lines[0], lines
    assert lines[1] == "readable True", lines
    chunks = int(lines[0].split()[2])
    assert chunks >= 8                         # it did fill up, not fail at once
    size, chunk = 64 << 20, 256 << 10
    rng = random.Random(5)
    want = bytearray(size)
    for i in range(chunks):
        want[i * chunk:(i + 1) * chunk] = rng.randbytes(chunk)
    with Disk.open(path) as d:
        assert d.read(0, size) == want
        assert_consistent(d)
        # Freeing space makes the disk writable again.
        d.trim(0, 16 * chunk)
        d.flush()
        d.write(0, pattern(3, chunk))
        d.flush()
        want[:16 * chunk] = bytes(16 * chunk)
        want[:chunk] = pattern(3, chunk)
        assert d.read(0, size) == want
        assert_consistent(d)


def test_no_space_for_metadata(small_fs, monkeypatch):
    """A full file system fails the metadata commit: that call says so, every
    later request fails (no later flush may claim the lost writes durable),
    and a reopen finds the last successful flush, intact and writable."""
    # No reserve for the metadata (btree/store.py), as when it is used up:
    # the commit meets the full file system.
    monkeypatch.setattr(store, "RESERVE_BYTES", 0)
    path = os.path.join(small_fs, "disk")
    size = 8 * MiB
    d = Disk.create(path, size)
    try:
        rng = random.Random(1)
        for b in range(1023, -1, -2):        # scattered: many extents, many nodes
            d.write(b * BS, rng.randbytes(BS))
        d.flush()
        committed = d.read(0, size)
        filler = _fill(small_fs)
        with pytest.raises(NoSpace) as ei:
            for r in range(5):
                for b in range(1 + r, 1024, 8):
                    d.trim(b * BS, BS)
                d.create_snapshot(f"s{r}")
            d.flush()
        assert ei.value.errno == errno.ENOSPC
        assert "last successful flush" in str(ei.value)
        for call in (d.flush, lambda: d.read(0, BS), lambda: d.write(0, b"x"), d.snapshots,
                     lambda: d.create_snapshot("later")):
            with pytest.raises(DiskFailed) as ei:
                call()
            assert ei.value.errno == errno.EIO and "no space" in str(ei.value)
    finally:
        d.close()
    os.unlink(filler)
    with Disk.open(path) as d:
        assert d.read(0, size) == committed
        assert d.snapshots() == []
        assert_consistent(d)
        d.write(0, b"z" * BS)
        d.flush()
    with Disk.open(path) as d:
        assert d.read(0, BS) == b"z" * BS
        assert d.read(BS, size - BS) == committed[BS:]
        assert_consistent(d)


CREATE = r"""
import sys
from vdisk import Disk
from vdisk.errors import VdiskError
try:
    Disk.create(sys.argv[1], 1 << 20).close()
    print("created")
except VdiskError as e:
    print(type(e).__name__, e.errno, e)
"""


def _fill(directory):
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\xff" * 65536)
    return filler


def test_create_on_a_full_file_system(small_fs):
    _fill(small_fs)
    path = os.path.join(small_fs, "disk")
    r = run_child(CREATE, path)
    assert r.returncode == 0, f"Disk.create killed the process (rc {r.returncode}): {r.stderr[-1000:]}"
    assert r.stdout.startswith(f"NoSpace {errno.ENOSPC} "), r.stdout
    assert not os.path.exists(path)


def test_read_only_view_beside_the_writer_in_one_process(tmp_path):
    # LMDB allows one environment per file per process; the store shares it.
    path = str(tmp_path / "d")
    with Disk.create(path, 1 << 20) as w:
        w.write(0, b"a" * 4096)
        w.flush()
        with Disk.open(path, readonly=True) as r:
            assert r.read(0, 4096) == b"a" * 4096
            w.write(0, b"b" * 4096)
            w.flush()
            assert r.read(0, 4096) == b"b" * 4096      # follows the writer's commits
            with pytest.raises(ReadOnly):
                r.write(0, b"c")
        w.write(4096, b"d")                            # the writer is unaffected by the reader's close
        w.flush()
    with Disk.open(path, readonly=True) as r:
        assert r.read(4096, 1) == b"d"


def test_a_snapshot_view_never_reads_a_newer_snapshot_of_the_same_name(tmp_path):
    with Disk.create(str(tmp_path / "d.vdisk"), 1 << 20) as d:
        d.write(0, b"A" * 4096)
        d.create_snapshot("s")
        old = d.open_snapshot("s")
        d.delete_snapshot("s")
        d.write(0, b"B" * 4096)
        d.create_snapshot("s")
        with pytest.raises(NotFound):
            old.read(0, 4)
        assert d.open_snapshot("s").read(0, 4) == b"BBBB"
