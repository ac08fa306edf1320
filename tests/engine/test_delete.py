"""Snapshot deletion: spilled sort buffers, crash resumption, deletion beside live I/O."""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest

from vdisk import Disk
from vdisk.snapshots import delete as deletion
from vdisk.snapshots.runbuffer import RunBuffer

from .accounting import assert_consistent
from .util import pattern, run_child

BS = 4096
BLOCKS = 2048


def _build(path, seed=1, snaps=3, writes=300):
    """A disk with ``snaps`` snapshots, each followed by scattered rewrites."""
    rnd = random.Random(seed)
    model = bytearray(BLOCKS * BS)
    taken = {}
    with Disk.create(path, BLOCKS * BS) as d:
        d.write(0, pattern(seed, BLOCKS * BS))
        model[:] = pattern(seed, BLOCKS * BS)
        for s in range(snaps):
            d.create_snapshot(f"s{s}")
            taken[f"s{s}"] = bytes(model)
            for i in range(writes):
                lba = rnd.randrange(BLOCKS)
                data = pattern(seed * 1000 + s * writes + i, BS)
                d.write(lba * BS, data)
                model[lba * BS:(lba + 1) * BS] = data
        d.flush()
    return model, taken


def test_run_buffer_spills_and_merges_in_order(tmp_path):
    rnd = random.Random(7)
    runs = [(v, rnd.randrange(1, 50)) for v in rnd.sample(range(0, 10**9, 64), 5000)]
    with RunBuffer(str(tmp_path), limit_bytes=40 * 300) as buf:
        for v, n in runs:
            buf.add(v, n)
        assert buf.spilled_files >= 10
        assert list(buf.sorted_runs()) == sorted(runs)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("delete-runs-")]


@pytest.mark.parametrize("victim", ["s0", "s1", "s2"])
def test_delete_with_a_tiny_buffer_frees_the_same_as_in_memory(scratch, victim):
    freed = {}
    for limit in (64 << 20, 200):
        path = os.path.join(scratch, f"d{limit}")
        model, taken = _build(path)
        with Disk.open(path) as d:
            before = d.info()["physical_bytes"]
            freed[limit] = d.delete_snapshot(victim, buffer_bytes=limit)
            assert d.info()["physical_bytes"] == before - freed[limit] * BS
            assert d.read(0, BLOCKS * BS) == bytes(model)
            for name, want in taken.items():
                if name != victim:
                    assert d.open_snapshot(name).read(0, BLOCKS * BS) == want
            assert_consistent(d)
            assert victim not in [s.name for s in d.snapshots()]
        assert not [n for n in os.listdir(path) if n.startswith("delete-runs-")]
    assert freed[200] == freed[64 << 20] > 0


KILL_IN_SWEEP = """
import os, signal, sys
from vdisk import Disk
from vdisk.snapshots import delete as deletion
stage, after = sys.argv[2], int(sys.argv[3])
count = [0]
def killer(orig):
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] > after:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)
    return wrapped
if stage == "sweep":
    Disk.forget_vbas = killer(Disk.forget_vbas)
else:
    deletion._scan = killer(deletion._scan)
deletion.COMMIT_RUNS = 1             # commit after every run, so a kill lands between commits
with Disk.open(sys.argv[1]) as d:
    deletion.delete_snapshot(d, "s1", 400, 0.0)     # one run per batch
print("not killed")
"""


@pytest.mark.parametrize("stage,after", [("scan", 0), ("sweep", 1), ("sweep", 12)])
def test_deletion_killed_midway_finishes_on_the_next_open(scratch, stage, after):
    path = os.path.join(scratch, "d")
    model, taken = _build(path, seed=3)
    with Disk.open(path) as d:
        before = d.info()["physical_bytes"]
        expect = d.snapshots()[1].exclusive_bytes
    r = run_child(KILL_IN_SWEEP, path, stage, after)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr[-2000:])
    with Disk.open(path) as d:            # the open finishes the deletion, in the background
        assert d.wait_maintenance(60)
        assert deletion.pending_deletion(d) is None
        assert [s.name for s in d.snapshots()] == ["s0", "s2"]
        assert d.read(0, BLOCKS * BS) == bytes(model)
        for name in ("s0", "s2"):
            assert d.open_snapshot(name).read(0, BLOCKS * BS) == taken[name]
        assert_consistent(d)
        assert d.info()["physical_bytes"] == before - expect
    assert not [n for n in os.listdir(path) if n.startswith("delete-runs-")]


def test_reads_and_writes_continue_during_deletion(scratch, monkeypatch):
    path = os.path.join(scratch, "d")
    model, taken = _build(path, seed=5, writes=600)
    monkeypatch.setattr(deletion, "DEFAULT_STALL", 0.002)     # many batches
    rnd = random.Random(9)
    with Disk.open(path) as d:
        done = threading.Event()
        errors = []
        ops = [0]

        def writer():
            try:
                while not done.is_set() and ops[0] < 5000:
                    lba = rnd.randrange(BLOCKS)
                    data = pattern(10**6 + ops[0], BS)
                    d.write(lba * BS, data)
                    model[lba * BS:(lba + 1) * BS] = data
                    assert d.read(lba * BS, BS) == data
                    ops[0] += 1
            except BaseException as e:         # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            freed = deletion.delete_snapshot(d, "s1", stall=0.002)
        finally:
            done.set()
            t.join(30)
        assert not errors, errors
        assert freed > 0 and ops[0] > 0
        d.flush()
        assert d.read(0, BLOCKS * BS) == bytes(model)
        for name in ("s0", "s2"):
            assert d.open_snapshot(name).read(0, BLOCKS * BS) == taken[name]
        assert_consistent(d)


def test_base_of_two_dependents_is_deferred_until_one_is_left(make_disk):
    d = make_disk(64 * BS)
    d.write(0, pattern(1, 8 * BS))
    d.create_snapshot("base")
    d.write(0, pattern(2, 4 * BS))          # the child owns these alone
    d.create_snapshot("child")
    d.revert("base")                         # base: dependents child + running point
    d.write(4 * BS, pattern(3, BS))
    before = d.info()["physical_bytes"]
    assert d.delete_snapshot("base") == 0    # deferred: no block may go yet
    assert [s.name for s in d.snapshots()] == ["child"]
    assert d.snapshots()[0].parent is None   # the deferred base is not shown
    with pytest.raises(Exception):
        d.open_snapshot("base")
    assert d.open_snapshot("child").read(0, 8 * BS) == pattern(2, 4 * BS) + pattern(1, 8 * BS)[4 * BS:]
    d.create_snapshot("base")                # the name is free again
    d.delete_snapshot("base")
    d.flush()
    assert_consistent(d)
    # Deleting the child leaves the deferred base one dependent: both go.
    d.delete_snapshot("child")
    d.flush()
    assert d.snapshots() == []
    assert not [r for r in d.snapshot_records()]
    assert d.read(0, 8 * BS) == pattern(1, 8 * BS)[:4 * BS] + pattern(3, BS) + pattern(1, 8 * BS)[5 * BS:]
    assert d.info()["physical_bytes"] < before
    assert_consistent(d)


def test_revert_away_from_a_deferred_base_reaps_it(make_disk):
    d = make_disk(64 * BS)
    d.write(0, pattern(1, 8 * BS))
    d.create_snapshot("a")
    d.write(0, pattern(2, 8 * BS))
    d.create_snapshot("b")
    d.revert("a")
    d.delete_snapshot("a")                   # base of b and the running point: deferred
    assert len(d.snapshot_records()) == 2
    d.revert("b")                            # the running point leaves a's deferred tree
    assert [r.name for r in d.snapshot_records()] == ["b"]
    assert d.read(0, 8 * BS) == pattern(2, 8 * BS)
    d.flush()
    assert_consistent(d)


def test_compact_returns_scattered_free_blocks_to_the_file_system(scratch):
    path = os.path.join(scratch, "d")
    model, taken = _build(path, seed=11, snaps=2)
    with Disk.open(path) as d:
        d.delete_snapshot("s0")                  # frees scattered single blocks: not punched
        d.flush()
        info = d.info()
        assert info["file_bytes"] > info["physical_bytes"]
        returned = d.compact(stall=0.001)
        info2 = d.info()
        assert returned > 0
        # Exact on tmpfs; ext4 may add an extent-tree block to st_blocks.
        assert 0 <= info2["file_bytes"] - (info["file_bytes"] - returned) <= 64 << 10
        assert info2["physical_bytes"] == info["physical_bytes"]
        # What is left in the file is live data (the file system may round up).
        assert info2["file_bytes"] <= info2["physical_bytes"] + (1 << 20)
        assert d.read(0, BLOCKS * BS) == bytes(model)
        assert d.open_snapshot("s1").read(0, BLOCKS * BS) == taken["s1"]
        assert d.compact() == 0                  # nothing left to punch
        assert_consistent(d)


def test_info_shows_what_a_deferred_base_still_holds(make_disk):
    d = make_disk(64 * BS)
    d.write(0, pattern(1, 8 * BS))
    d.create_snapshot("base")
    d.write(0, pattern(2, 4 * BS))           # the child's own first half
    d.create_snapshot("child")
    d.revert("base")
    d.write(0, pattern(3, 8 * BS))           # the running point's own, all of it
    assert d.info()["deferred_bytes"] == 0
    d.delete_snapshot("base")                # deferred: child + running point depend on it
    # Its first half is now held by it alone (the child and the running
    # point both rewrote it): shown, so the space is not a mystery.
    assert d.info()["deferred_bytes"] == 4 * BS
    d.delete_snapshot("child")               # one dependent left: the base goes too
    assert d.info()["deferred_bytes"] == 0
    assert_consistent(d)
