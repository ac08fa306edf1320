"""Disk.rename_snapshot: one commit that changes a name and nothing else.

The snapshot keeps its tree, blocks and record; its children's, a hidden
deferred base's and the running point's ``parent`` follow; the rules of
creation apply to the new name and those of lookup to the old one; a
refusal changes nothing; a SIGKILL at any point leaves the old name or the
new one, never both or neither.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vdisk import Disk
from vdisk import disk as engine
from vdisk.errors import AlreadyExists, DiskFailed, InvalidArgument, NotFound, ReadOnly, StorageError
from vdisk.snapshots import delete as deletion
from vdisk.snapshots.verify import verify

from .accounting import assert_consistent
from .util import pattern

BS = 4096


def _family(d):
    """name -> parent of every record (hidden ones too), and the running point's parent."""
    return {r.name: r.parent for r in d.snapshot_records()}, d.state.parent


def _records(d):
    return {r.name: r for r in d.snapshot_records()}


def _assert_clean(path):
    r = verify(path)
    assert r.ok, [str(p) for p in r.problems]


def _three(d):
    """a <- b <- running point, each snapshot holding its own first block."""
    d.write(0, pattern(1, BS))
    d.create_snapshot("a")
    d.write(0, pattern(2, BS))
    d.create_snapshot("b")
    d.write(0, pattern(3, BS))


def test_rename_keeps_the_snapshot_and_moves_its_family(disk, disk_path):
    _three(disk)
    before = _records(disk)["a"]
    info = disk.rename_snapshot("a", "first")
    assert (info.name, info.parent, info.seq) == ("first", None, before.seq)
    rec = _records(disk)["first"]
    assert (rec.created_ns, rec.seq, rec.vba_watermark, rec.size) == \
        (before.created_ns, before.seq, before.vba_watermark, before.size)
    assert _family(disk) == ({"first": None, "b": "first"}, "b")
    disk.rename_snapshot("b", "second")
    assert _family(disk) == ({"first": None, "second": "first"}, "second")
    assert disk.open_snapshot("first").read(0, BS) == pattern(1, BS)
    assert disk.open_snapshot("second").read(0, BS) == pattern(2, BS)
    assert_consistent(disk)
    disk.close()
    with Disk.open(disk_path) as d:       # it was committed
        assert _family(d) == ({"first": None, "second": "first"}, "second")
        assert d.read(0, BS) == pattern(3, BS)
        assert [s.name for s in d.snapshots()] == ["first", "second"]
        # Space and ownership follow the snapshot, not the name.
        assert [s.exclusive_bytes for s in d.snapshots()] == [BS, BS]
        # The family still works: deleting and reverting by the new names.
        d.delete_snapshot("first")
        assert d.open_snapshot("second").read(0, BS) == pattern(2, BS)
        d.revert("second")
        assert d.read(0, BS) == pattern(2, BS)
        assert_consistent(d)
    _assert_clean(disk_path)


def test_renamed_writes_stay_copy_on_write(disk):
    """The running point's watermark is untouched: blocks of the renamed
    parent are still shared, so writing them must not change it."""
    _three(disk)
    disk.rename_snapshot("b", "c")
    disk.write(0, pattern(4, BS))
    disk.write(BS, pattern(5, BS))
    assert disk.open_snapshot("c").read(0, 2 * BS) == pattern(2, BS) + bytes(BS)
    assert_consistent(disk)


@pytest.mark.parametrize("old, new, error, words", [
    ("a", "b", AlreadyExists, "snapshot 'b' already exists"),
    ("a", "a", AlreadyExists, "already exists"),
    ("nope", "c", NotFound, "no snapshot named 'nope'"),
    ("~a.1", "c", NotFound, "no snapshot named"),            # hidden deferred names are not users'
    ("a", "~c", InvalidArgument, "bad snapshot name"),
    ("a", "..", InvalidArgument, "bad snapshot name"),
    ("a", "-x", InvalidArgument, "bad snapshot name"),
    ("a", "x/y", InvalidArgument, "bad snapshot name"),
    ("a", "x" * 129, InvalidArgument, "bad snapshot name"),
    ("a", "", InvalidArgument, "bad snapshot name"),
])
def test_a_refused_rename_changes_nothing(disk, disk_path, old, new, error, words):
    _three(disk)
    before = _family(disk)
    with pytest.raises(error, match=words.replace(".", r"\.")):
        disk.rename_snapshot(old, new)
    assert _family(disk) == before
    disk.flush()                          # the disk goes on
    disk.close()
    with Disk.open(disk_path) as d:
        assert _family(d) == before
    _assert_clean(disk_path)


def test_a_snapshot_named_under_the_older_rule_can_be_given_a_good_name(disk, monkeypatch):
    disk.write(0, pattern(1, BS))
    monkeypatch.setattr(engine, "validate_snapshot_name", lambda name: None)
    disk.create_snapshot("..")            # as an older vdisk allowed
    monkeypatch.undo()
    disk.rename_snapshot("..", "dots")
    assert [s.name for s in disk.snapshots()] == ["dots"] and disk.state.parent == "dots"
    assert disk.open_snapshot("dots").read(0, BS) == pattern(1, BS)


def test_refused_on_a_closed_a_stopped_and_a_read_only_disk(disk, disk_path, monkeypatch):
    _three(disk)
    real = os.fdatasync

    def fail(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(StorageError):
        disk.rename_snapshot("a", "x")    # its commit fails: the disk stops
    monkeypatch.setattr(os, "fdatasync", real)
    with pytest.raises(DiskFailed):
        disk.rename_snapshot("a", "x")
    disk.close()
    with pytest.raises(InvalidArgument, match="closed"):
        disk.rename_snapshot("a", "x")
    with Disk.open(disk_path) as d:       # the failed commit left the old name
        assert set(_records(d)) == {"a", "b"}
    with Disk.open(disk_path, readonly=True) as d, pytest.raises(ReadOnly):
        d.rename_snapshot("a", "x")
    _assert_clean(disk_path)


def test_a_view_opened_under_the_old_name_stops_reading_it(disk):
    """Views are bound to a name and to the snapshot they opened: after the
    rename the old name's view fails (as after a delete) and never reads
    another snapshot that takes the name later; the new name reads the same."""
    _three(disk)
    old = disk.open_snapshot("a")
    assert old.read(0, BS) == pattern(1, BS)
    disk.rename_snapshot("a", "x")
    with pytest.raises(NotFound, match="no longer exists"):
        old.read(0, BS)
    disk.create_snapshot("a")             # another snapshot, same name
    with pytest.raises(NotFound):
        old.read(0, BS)
    assert disk.open_snapshot("x").read(0, BS) == pattern(1, BS)
    assert disk.open_snapshot("a").read(0, BS) == pattern(3, BS)
    disk.rename_snapshot("x", "back")
    disk.delete_snapshot("a")
    disk.rename_snapshot("back", "a")     # the same snapshot, its name again: the view reads it
    assert old.read(0, BS) == pattern(1, BS)


def test_a_deferred_base_keeps_following_its_parent(disk, disk_path):
    """After a revert, a deleted snapshot with two dependents is kept hidden;
    its record's parent must follow a rename too, or reaping it later would
    re-parent its last dependent to a name that no longer exists."""
    disk.write(0, pattern(1, BS))
    disk.create_snapshot("base")
    disk.write(BS, pattern(2, BS))
    disk.create_snapshot("mid")
    disk.write(2 * BS, pattern(3, BS))
    disk.create_snapshot("top")
    disk.revert("mid")                    # mid: the base of top and the running point
    disk.delete_snapshot("mid")           # deferred
    hidden = [n for n in _records(disk) if n.startswith(engine.DEFERRED_PREFIX)]
    assert len(hidden) == 1
    with pytest.raises(NotFound):
        disk.rename_snapshot(hidden[0], "visible")
    disk.rename_snapshot("base", "root")
    disk.rename_snapshot("top", "leaf")
    parents, running = _family(disk)
    assert parents == {"root": None, hidden[0]: "root", "leaf": hidden[0]} and running == hidden[0]
    assert [(s.name, s.parent) for s in disk.snapshots()] == [("root", None), ("leaf", "root")]
    disk.delete_snapshot("leaf")          # the hidden base has one dependent left: reaped
    assert _family(disk) == ({"root": None}, "root")
    assert disk.read(0, 3 * BS) == pattern(1, BS) + pattern(2, BS) + bytes(BS)
    assert_consistent(disk)
    disk.close()
    _assert_clean(disk_path)


def test_a_rename_between_the_batches_of_a_deletion(disk, disk_path):
    """A deletion scans the trees that could share its blocks by name, in
    batches; a rename between two batches must not make it free a block the
    renamed snapshot still maps."""
    disk.write(0, pattern(1, 8 * BS))
    disk.create_snapshot("a")
    disk.write(0, pattern(2, 4 * BS))
    disk.create_snapshot("b")
    disk.write(0, pattern(3, 2 * BS))
    disk.create_snapshot("c")
    with disk._lock:
        deletion.begin(disk, "b")         # step 1 only: scan and sweep still to run
    disk.rename_snapshot("c", "renamed")
    disk.rename_snapshot("a", "first")
    deletion.run_pending(disk)
    assert disk.open_snapshot("renamed").read(0, 8 * BS) == \
        pattern(3, 2 * BS) + pattern(2, 4 * BS)[2 * BS:] + pattern(1, 8 * BS)[4 * BS:]
    assert disk.open_snapshot("first").read(0, 8 * BS) == pattern(1, 8 * BS)
    assert_consistent(disk)
    disk.close()
    _assert_clean(disk_path)


def test_a_read_only_opener_sees_the_new_name(disk, disk_path):
    _three(disk)
    disk.flush()
    code = textwrap.dedent("""
        import sys
        from vdisk import Disk
        with Disk.open(sys.argv[1], readonly=True) as d:
            print(d.open_snapshot("a").read(0, 8).hex())
            sys.stdout.flush()
            sys.stdin.readline()
            print(" ".join(s.name for s in d.snapshots()))
            print(d.open_snapshot("x").read(0, 8).hex())
    """)
    p = subprocess.Popen([sys.executable, "-c", code, disk_path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == pattern(1, 8).hex()
        disk.rename_snapshot("a", "x")
        out, err = p.communicate("\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert out.split("\n")[:2] == ["x b", pattern(1, 8).hex()]


# ------------------------------------------------------------------ crashes

# The child renames a -> b -> x -> a ... (the renamed snapshot's child c
# follows), writing between renames, and reports each rename that returned.
# With KILL_AT >= 0 it renames once, and SIGKILLs itself at write KILL_AT of
# the rename's LMDB transaction.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from vdisk import Disk
    path, kill_at = sys.argv[1], int(sys.argv[2])
    d = Disk.open(path)
    if kill_at >= 0:
        store = d.store
        real_begin = store._begin
        count = [0]

        class Txn:
            def __init__(self, txn):
                self.txn = txn
            def __enter__(self):
                self.txn.__enter__()
                return self
            def __exit__(self, *exc):
                return self.txn.__exit__(*exc)
            def _step(self):
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                count[0] += 1
            def put(self, *a, **kw):
                self._step()
                return self.txn.put(*a, **kw)
            def delete(self, *a, **kw):
                self._step()
                return self.txn.delete(*a, **kw)

        def begin(**kw):
            txn = real_begin(**kw)
            return Txn(txn) if kw.get("write") else txn
        store._begin = begin
        names = {r.name for r in d.snapshot_records()}
        old, new = ("a", "b") if "a" in names else ("b", "a")
        d.rename_snapshot(old, new)
        print("done", count[0], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)     # no close: the rename's own commit is all
    cycle = ["a", "b", "x"]
    i = 0
    while True:
        names = {r.name for r in d.snapshot_records()}
        old = next(n for n in cycle if n in names)
        new = cycle[(cycle.index(old) + 1) % 3]
        d.write((i % 64) * 4096, bytes([i % 251 + 1]) * 4096)
        d.rename_snapshot(old, new)
        print("renamed", new, flush=True)
        i += 1
""")


def _start_family(path):
    """p <- a <- c <- running point; a is the one renamed."""
    with Disk.create(path, 1 << 20) as d:
        d.write(0, pattern(1, BS))
        d.create_snapshot("p")
        d.write(BS, pattern(2, BS))
        d.create_snapshot("a")
        d.write(2 * BS, pattern(3, BS))
        d.create_snapshot("c")


def _child(path, kill_at):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD, path, str(kill_at)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


CYCLE = ["a", "b", "x"]


def _assert_one_name(path) -> str:
    """Exactly one of the cycle's names, with its family and data whole; returns it."""
    with Disk.open(path) as d:
        recs = _records(d)
        names = set(recs) & set(CYCLE)
        assert len(names) == 1 and set(recs) == {"p", "c"} | names, sorted(recs)
        name = names.pop()
        assert recs[name].parent == "p" and recs["c"].parent == name and d.state.parent == "c"
        assert d.open_snapshot(name).read(0, 3 * BS) == pattern(1, BS) + pattern(2, BS) + bytes(BS)
        assert d.open_snapshot("c").read(BS, 2 * BS) == pattern(2, BS) + pattern(3, BS)
        assert_consistent(d)
    _assert_clean(path)
    return name


def test_sigkill_inside_the_rename_commit_leaves_one_name(scratch):
    """Killed at each write of the rename's metadata transaction in turn: the
    old name every time; killed after it returned: the new one."""
    template = os.path.join(scratch, "template")
    _start_family(template)
    kill_at = 0
    while True:
        path = os.path.join(scratch, f"d{kill_at}")
        shutil.copytree(template, path)
        p = _child(path, kill_at)
        out, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, err
        name = _assert_one_name(path)
        if out.startswith("done"):
            # The first kill point past the transaction's last write.
            assert name == "b" and kill_at == int(out.split()[1])
            break
        assert name == "a", f"killed at write {kill_at} of the commit, yet renamed"
        kill_at += 1
        shutil.rmtree(path)
    # Each of the transaction's writes was a kill point: the records, the
    # tree records, the running point and the counters.
    assert kill_at >= 6, kill_at


# Kills at random moments of a stream of renames: 6 in ./dev test (the test
# above kills at every write of one rename's commit); VDISK_RENAME_KILLS=N runs
# N, VDISK_TORTURE_FULL=1 the 12 of before (docs/RELIABILITY.md).
RANDOM_KILLS = int(os.environ.get("VDISK_RENAME_KILLS") or (12 if os.environ.get("VDISK_TORTURE_FULL") else 6))


@pytest.mark.slow
def test_sigkill_at_random_moments_of_renames_leaves_one_name(scratch):
    path = os.path.join(scratch, "disk")
    _start_family(path)
    rng = random.Random(20261201)
    name, renamed = "a", 0
    for _ in range(RANDOM_KILLS):
        p = _child(path, -1)
        time.sleep(rng.uniform(0.3, 0.8))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, err
        reported = [line.split()[1] for line in out.splitlines(keepends=True) if line.endswith("\n")]
        if reported:
            name = reported[-1]
        found = _assert_one_name(path)
        # The last reported rename is durable; the next one may be too (done,
        # killed before it was reported); nothing else.
        assert found in (name, CYCLE[(CYCLE.index(name) + 1) % 3]), (found, name)
        name = found
        renamed += len(reported)
    assert renamed > 0
