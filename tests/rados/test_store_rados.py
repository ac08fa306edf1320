"""The node store on RADOS (btree/store_rados.py) against the real cluster.

What every node store promises (atomic commits, reopen finds the last one,
the Forest and its checker run on it), then what RADOS makes hard: a writer
SIGKILLed at any moment of a commit leaves exactly the old or the new
commit, a journal left half-applied is replayed, a reader beside the
writer never sees a mix, and a writer that lost its lock or was fenced
cannot commit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import rados_model
from vdisk import ceph as vceph
from vdisk.btree import Forest, Layout
from vdisk.btree.check import check_forest
from vdisk.btree.store_rados import RadosNodeStore
from vdisk.errors import IntegrityError, ReadOnly, StorageError

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rados_crash_child.py")


def test_commits_are_visible_whole_and_survive_reopening(ioctx, prefix):
    s = RadosNodeStore(ioctx, prefix)
    assert s.load(1) is None and s.last_node_id() is None and s.meta_items(b"") == []
    s.commit({1: b"one", 2: b"two", (5 << 16) + 3: b"far"}, [], {b"tree/a": b"A", b"tree/b": b"B", b"x": b"X"})
    s.commit({2: b"TWO"}, [1], {b"tree/a": None})
    again = RadosNodeStore(ioctx, prefix)
    assert again.load(1) is None and again.load(2) == b"TWO" and again.load((5 << 16) + 3) == b"far"
    assert list(again.node_ids()) == [2, (5 << 16) + 3] and again.last_node_id() == (5 << 16) + 3
    assert again.meta_get(b"tree/b") == b"B" and again.meta_get(b"tree/a") is None
    assert again.meta_items(b"tree/") == [(b"tree/b", b"B")]
    assert again.meta_items(b"") == [(b"tree/b", b"B"), (b"x", b"X")]
    ro = RadosNodeStore(ioctx, prefix, readonly=True)
    with pytest.raises(ReadOnly):
        ro.commit({}, [], {})
    assert ro.current_view() == 2
    with ro.read_view() as v:
        assert v == 2 and ro.meta_get(b"x") == b"X" and ro.load(2) == b"TWO"


def test_a_missing_store_is_not_created_read_only(ioctx, prefix):
    with pytest.raises(IntegrityError):
        RadosNodeStore(ioctx, prefix, readonly=True)


def test_a_forest_runs_on_it_and_checks_clean(ioctx, prefix):
    forest = Forest(RadosNodeStore(ioctx, prefix))
    tree = forest.create_tree("t", Layout("u64", "u64"))
    for i in range(3000):
        tree.insert(i * 7, i)
    forest.commit()
    for i in range(0, 3000, 3):
        tree.delete(i * 7)
    forest.commit()
    reopened = Forest(RadosNodeStore(ioctx, prefix))
    t = reopened.tree("t")
    assert t.get(7) == 1 and t.get(0) is None and t.get(7 * 2997) is None and t.get(7 * 2999) == 2999
    assert [p for r in check_forest(reopened) for p in r.problems] == []


def test_a_second_writer_cannot_commit_over_the_first(ioctx, prefix):
    a = RadosNodeStore(ioctx, prefix)
    b = RadosNodeStore(ioctx, prefix)
    a.commit({1: b"a"}, [], {b"who": b"a"})
    with pytest.raises(StorageError, match="another writer committed"):
        b.commit({1: b"b"}, [], {b"who": b"b"})
    with pytest.raises(StorageError, match="failed a commit earlier"):
        b.commit({}, [], {})
    with pytest.raises(StorageError):
        b.sync()
    assert RadosNodeStore(ioctx, prefix).load(1) == b"a"


def test_a_writer_that_lost_its_lock_cannot_commit(ioctx, prefix, new_client, ceph):
    io = new_client().open_ioctx(ceph.pool)
    s = RadosNodeStore(io, prefix)
    vceph.lock_exclusive(io, s.header, "writer-1", "first writer")
    s.guard = vceph.lock_guard("writer-1")
    s.commit({1: b"first"}, [], {b"k": b"1"})
    [holder] = vceph.lockers(ioctx, s.header)
    vceph.break_lock(ioctx, s.header, holder)                # a takeover without fencing
    vceph.lock_exclusive(ioctx, s.header, "writer-2", "second writer")
    with pytest.raises(StorageError, match="no longer holds its lock"):
        s.commit({1: b"late"}, [], {b"k": b"2"})
    after = RadosNodeStore(ioctx, prefix)
    assert after.load(1) == b"first" and after.meta_get(b"k") == b"1"


def test_a_fenced_writer_cannot_commit(ioctx, prefix, new_client, fence_now, ceph):
    victim = new_client()
    s = RadosNodeStore(victim.open_ioctx(ceph.pool), prefix)
    s.commit({1: b"first"}, [], {b"k": b"1"})
    fence_now(victim.get_addrs())
    with pytest.raises(StorageError, match="blocklisted"):
        s.commit({1: b"late"}, [], {b"k": b"2"})
    assert RadosNodeStore(ioctx, prefix).meta_get(b"k") == b"1"


# ----------------------------------------------------------- crashes

def _child(ceph, name, first, last, step="none", kill_after=None):
    p = subprocess.Popen([sys.executable, CHILD, ceph.conf, ceph.pool, name, str(first), str(last), step],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    done = [int(line.split()[1]) for line in out.splitlines() if line.startswith("done ")]
    return p.returncode, done, err


def _check_one_commit(ioctx, name, acknowledged: int) -> int:
    """Open (replaying), and show the store holds exactly one commit: the last or the next."""
    store = RadosNodeStore(ioctx, name)
    k = int(store.meta_get(b"k") or b"0")
    assert k in (acknowledged, acknowledged + 1), (k, acknowledged)
    assert store.current_view() == k
    assert rados_model.stored(store) == rados_model.state(k)
    assert not [o for o in ioctx.list_objects() if o.key.startswith(f"{name}.journal.{k:016x}")]
    return k


@pytest.mark.parametrize("step", ["journal", "published", "applied"])
def test_killed_at_each_step_of_a_commit_opens_at_exactly_one_commit(ceph, ioctx, prefix, step):
    rc, done, err = _child(ceph, prefix, 1, 3, step)
    assert rc == -signal.SIGKILL and done == [1, 2], err
    k = _check_one_commit(ioctx, prefix, 2)
    assert k == (2 if step == "journal" else 3)              # published is the commit point
    rc, done, err = _child(ceph, prefix, k + 1, k + 2)        # and it goes on from there
    assert rc == 0 and done == [k + 1, k + 2], err
    _check_one_commit(ioctx, prefix, k + 2)


# Kills at random moments: 3 in ./dev test (the test above kills at each step
# of a commit), the 6 of before with VDISK_TORTURE_FULL=1 (docs/RELIABILITY.md).
RANDOM_KILLS = 6 if os.environ.get("VDISK_TORTURE_FULL") else 3


def test_killed_at_random_moments_always_opens_at_exactly_one_commit(ceph, ioctx, prefix):
    rng = random.Random(16)
    k = 0
    for _ in range(RANDOM_KILLS):
        rc, done, err = _child(ceph, prefix, k + 1, k + 400, kill_after=rng.uniform(0.4, 1.2))
        assert rc in (0, -signal.SIGKILL), err
        k = _check_one_commit(ioctx, prefix, done[-1] if done else k)


def test_a_reader_beside_the_writer_never_sees_a_mix(ioctx, prefix, new_client, ceph):
    writer = RadosNodeStore(ioctx, prefix)
    writer.commit(*[rados_model.batch(1)[0], [], rados_model.batch(1)[1]])
    reader = RadosNodeStore(new_client().open_ioctx(ceph.pool), prefix, readonly=True)
    stop = threading.Event()
    seen, retries, errors = set(), [0], []

    def read_loop():
        try:
            views()
        except BaseException as e:           # the test thread reports it
            errors.append(e)

    def views():
        while not stop.is_set():
            v = None
            try:
                with reader.read_view() as v:
                    k = int(reader.meta_get(b"k"))
                    nodes, meta = rados_model.state(k)
                    assert v == k
                    assert dict(reader.meta_items(b"")) == meta
                    assert {i: reader.load(i) for i in nodes} == nodes
                    seen.add(k)
            except IntegrityError:
                assert reader.current_view() != v        # only ever because the view moved
                retries[0] += 1
    t = threading.Thread(target=read_loop)
    t.start()
    try:
        # Until the reader has pinned a few views (on a loaded machine most
        # of its views move under it, which is the retry path, not a failure).
        for k in range(2, 400):
            puts, meta = rados_model.batch(k)
            writer.commit(puts, rados_model.deletes(k), meta)
            if k >= 60 and len(seen) > 5:
                break
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    assert len(seen) > 5, (seen, retries)
