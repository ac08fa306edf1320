"""The redo log (vdisk/journal.py): a flush is one sync of the data store, and
a crash at any moment finds every flush, and only flushes, back.

A "crash" here is a copy of the container taken while the disk is open (what
SIGKILL leaves: the page cache and the last commit); the torture suite cuts
the power under a file system that drops what was not synced
(tests/torture/test_powercut.py).
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from vdisk import Disk, alloc, journal
from vdisk import disk as engine
from vdisk import format as fmt
from vdisk import logformat as lf
from vdisk.errors import IntegrityError, UnsupportedVersion
from vdisk.snapshots.verify import verify

from .accounting import assert_consistent
from .util import pattern, settled

BS = 4096
MiB = 1 << 20


def crash_copy(d, where: str) -> str:
    """The container as a crash would leave it now (the writer's lock left out)."""
    shutil.copytree(d.path, where, ignore=shutil.ignore_patterns("lock"))
    return where


class Counted:
    """Counts the data store's syncs and the node store's commits of one disk."""

    def __init__(self, d, monkeypatch):
        self.syncs = self.commits = 0
        sync, commit = d._data.sync, d.store.commit

        def counted_sync():
            self.syncs += 1
            sync()

        def counted_commit(*a, **k):
            self.commits += 1
            commit(*a, **k)
        monkeypatch.setattr(d._data, "sync", counted_sync)
        monkeypatch.setattr(d.store, "commit", counted_commit)


def test_a_flush_is_one_sync_and_no_metadata_commit(make_disk, monkeypatch):
    d = make_disk(4 * MiB)
    d.write(0, pattern(1, MiB))
    d.flush()                                   # the first flush commits: it starts the log
    n = Counted(d, monkeypatch)
    for i in range(20):
        d.write(i * 7 * BS, pattern(10 + i, BS))
        d.write(MiB + i * 3 * BS, pattern(50 + i, 3 * BS))
        d.zero(2 * MiB + i * BS, BS)
        d.flush()
    assert (n.syncs, n.commits) == (20, 0)
    d.flush()                                   # nothing since: nothing to sync
    assert n.syncs == 20
    assert_consistent(d)
    d.create_snapshot("s")                      # anything but writes commits in full
    assert n.commits == 1


def test_the_disk_records_the_log_in_its_format(make_disk):
    d = make_disk()
    d.write(0, pattern(1, BS))
    d.flush()
    rec = lf.decode_log(d.forest.meta_get(b"disk/log"))
    assert rec is not None and rec.head in d.log_blocks()
    assert d.config.version == fmt.CONTAINER_VERSION == 2
    assert d.info()["format_version"] == 2
    with pytest.raises(UnsupportedVersion):
        lf.decode_log(b"\x02" + bytes(31))
    with pytest.raises(IntegrityError):
        lf.decode_log(b"\x01" + bytes(30))


def _random_ops(rng, d, model, size, n):
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            off = rng.randrange(size // BS) * BS + rng.choice([0, 0, 1, rng.randrange(BS)])
            ln = max(1, min(rng.choice([rng.randrange(1, BS), BS, rng.randrange(2, 70) * BS]), size - off))
            data = rng.randbytes(ln)
            d.write(off, data)
            model[off:off + ln] = data
            yield "done"
        elif r < 0.68:
            off = rng.randrange(size)
            ln = max(1, min(rng.randrange(1, 48 * BS), size - off))
            d.zero(off, ln)
            model[off:off + ln] = bytes(ln)
            yield "zeroed"
        elif r < 0.70:
            # A read of several blocks settles the recent writes it meets,
            # and the PBAs they replaced are free at the next flush.
            off = rng.randrange(size // BS - 32) * BS
            assert d.read(off, 32 * BS) == model[off:off + 32 * BS]
        else:
            yield "flush"
            d.flush()
            yield "flushed"


# Seeds 0..N-1 (even ones commit only at flushes and snapshots, odd ones inside
# writes too): 4 in ./dev test, where the 8 it ran took ~20 s of the suite's
# wall time; VDISK_JOURNAL_SEEDS=N runs N, VDISK_TORTURE_FULL=1 the 8 of before
# (docs/RELIABILITY.md, "What ./dev test cuts").
CRASH_SEEDS = int(os.environ.get("VDISK_JOURNAL_SEEDS") or (8 if os.environ.get("VDISK_TORTURE_FULL") else 4))


@pytest.mark.parametrize("seed", range(CRASH_SEEDS))
def test_a_crash_at_any_point_finds_the_last_flush(scratch, monkeypatch, seed):
    """Copies taken between operations hold exactly the last flushed state,
    or the current one (every write acknowledged since may or may not be there,
    but nothing else); snapshots along the way commit in full. The PBA space
    grows little at a time, so that freed PBAs are soon handed out again
    after a commit, and the committed state alone stays exact (verify --data).
    Odd seeds commit by themselves inside writes every few dozen blocks (a
    write's record once went to the epoch after the commit that held it:
    found by a read-only server beside a writer).
    """
    monkeypatch.setattr(alloc, "GROW_BLOCKS", 16)
    if seed % 2:
        monkeypatch.setattr(engine, "AUTO_COMMIT_BLOCKS", 96)
        monkeypatch.setattr(engine, "AUTO_COMMIT_LIGHT_BLOCKS", 48)
    rng = random.Random(seed)
    size = 4 * MiB
    d = Disk.create(os.path.join(scratch, "d"), size)
    commits = Counted(d, monkeypatch)
    model = bytearray(size)
    flushed = bytes(size)
    snaps = {}
    crashes = 0
    try:
        for step in range(12):
            for event in _random_ops(rng, d, model, size, 40):
                if event == "flushed" or commits.commits:
                    # Flushed, or committed by itself inside the operation:
                    # at its end (a write's one), or part-way (a zero writes
                    # its edges first, each of which may commit: then what
                    # is durable is known again at the next flush).
                    flushed = None if event == "zeroed" and commits.commits else bytes(model)
                    commits.commits = 0
                if event in ("done", "zeroed") or flushed is None or rng.random() >= 0.2:
                    continue
                crashes += 1
                where = crash_copy(d, os.path.join(scratch, f"c{crashes}"))
                # The committed state alone, the log not redone, is exact with its data.
                report = verify(where, data=True)
                assert report.ok, [str(p) for p in report.problems]
                with Disk.open(where) as c:
                    got = c.read(0, size)
                    assert got in (flushed, bytes(model)), f"seed {seed} crash {crashes}"
                    for name, want in snaps.items():
                        assert c.open_snapshot(name).read(0, size) == want
                    assert_consistent(c)
                shutil.rmtree(where)
            if rng.random() < 0.3:
                name = f"s{step}"
                d.create_snapshot(name)
                snaps[name] = flushed = bytes(model)
                commits.commits = 0
        assert crashes >= 3
    finally:
        d.close()


def _flush_spanning_groups(d, first_lba: int, count: int, seed: int) -> dict[int, bytes]:
    """One-block writes enough for a flush of several groups; returns lba -> data."""
    written = {}
    for i in range(count):
        data = pattern(seed + i, BS)
        d.write((first_lba + 2 * i) * BS, data)
        written[first_lba + 2 * i] = data
    d.flush()
    return written


def _groups(where: str):
    """The chain of a closed-by-crash container: [(pba, group)], read raw."""
    with Disk.open(where, readonly=True) as r:
        rec = lf.decode_log(r.forest.meta_get(b"disk/log"))
        bs = r.block_size
    out = []
    with open(os.path.join(where, "data"), "rb") as f:
        pba, index, prev = rec.head, 0, lf.NO_PREV
        while True:
            f.seek(pba * bs)
            g = lf.decode_group(f.read(bs), rec.log_id, index, prev)
            if g is None:
                return out
            out.append((pba, g))
            pba, index, prev = g.next_pba, index + 1, g.digest


def _zero_block(where: str, pba: int, bs: int = BS):
    with open(os.path.join(where, "data"), "r+b") as f:
        f.seek(pba * bs)
        f.write(bytes(bs))


def test_a_last_flush_whose_data_did_not_land_is_dropped_whole(make_disk, scratch):
    d = make_disk(8 * MiB)
    d.write(0, pattern(1, 8 * MiB))
    d.flush()
    first = _flush_spanning_groups(d, 0, 40, 100)
    last = _flush_spanning_groups(d, 1, 40, 200)
    where = crash_copy(d, os.path.join(scratch, "c"))
    # The crash left the last flush's records but not one of its blocks.
    lba = sorted(last)[17]
    with d.lock:
        (_l, vba, _n), = settled(d)._lba.pieces(lba, 1)
        pba = d._recent[vba][0] if vba in d._recent else d._vba.pieces(vba, 1)[0][1]
    _zero_block(where, pba)
    with Disk.open(where) as c:
        for b, data in first.items():
            assert c.read(b * BS, BS) == data
        for b in last:
            assert c.read(b * BS, BS) == pattern(1, 8 * MiB)[b * BS:(b + 1) * BS]
        assert_consistent(c)


def test_a_group_of_a_dropped_flush_never_joins_the_chain_written_after(make_disk, scratch):
    """The dropped flush's later groups stay where they were; the writer that
    replayed goes on in the same epoch, its groups chained by hash and writer."""
    d = make_disk(8 * MiB)
    d.write(0, pattern(1, 8 * MiB))
    d.flush()
    keep = _flush_spanning_groups(d, 0, 10, 300)
    dropped = _flush_spanning_groups(d, 1, 400, 400)       # far more than one group
    where = crash_copy(d, os.path.join(scratch, "c"))
    chain = _groups(where)
    ends = [i for i, (_p, g) in enumerate(chain) if g.last]
    assert len(ends) == 2                                   # the epoch began with the first commit
    dropped_groups = [p for p, _g in chain[ends[-2] + 1:]]
    assert len(dropped_groups) > 2
    _zero_block(where, dropped_groups[0])                   # its first group torn: the rest stays
    with open(os.path.join(where, "data"), "rb") as f:
        f.seek(dropped_groups[1] * BS)
        second = f.read(BS)                                 # the dropped flush's group index 2
    with Disk.open(where) as c:
        assert all(c.read(b * BS, BS) == data for b, data in keep.items())
        assert all(c.read(b * BS, BS) != data for b, data in dropped.items())
        # The next flush writes its group (index 1) where the dropped one began.
        again = _flush_spanning_groups(c, 3, 30, 900)
        assert c._log_index == 2
        where2 = crash_copy(c, os.path.join(scratch, "c2"))
        after = c._log_next
    # Had the allocator put the next group where the dropped group 2 lies, the
    # chain would reach it: same epoch, the index it expects.
    with open(os.path.join(where2, "data"), "r+b") as f:
        f.seek(after * BS)
        f.write(second)
    with Disk.open(where2) as c2:
        for b, data in {**keep, **again}.items():
            assert c2.read(b * BS, BS) == data
        assert all(c2.read(b * BS, BS) != data for b, data in dropped.items() if b not in again)
        assert_consistent(c2)


def test_a_reader_beside_the_writer_follows_its_flushes(make_disk, disk_path):
    from .util import read_in_child
    d = make_disk(4 * MiB)
    d.write(0, pattern(1, 4 * MiB))
    d.flush()
    d.write(0, pattern(2, BS))
    d.zero(MiB, MiB)                            # freed and punched once flushed
    d.flush()
    got = read_in_child(disk_path, 0, 4 * MiB)
    want = bytearray(pattern(1, 4 * MiB))
    want[:BS] = pattern(2, BS)
    want[MiB:2 * MiB] = bytes(MiB)
    assert got == bytes(want)


def test_a_full_log_commits_in_full(make_disk, monkeypatch):
    monkeypatch.setattr(journal, "LOG_MAX_GROUPS", 3)
    d = make_disk(4 * MiB)
    d.write(0, pattern(1, BS))
    d.flush()
    n = Counted(d, monkeypatch)
    for i in range(8):
        d.write(i * BS, pattern(i, BS))
        d.flush()
    assert n.commits == 2                       # groups 0-2 logged, then a commit, and again
    assert_consistent(d)


def test_without_the_log_every_flush_commits(make_disk, monkeypatch):
    monkeypatch.setattr(journal, "LOG_ENABLED", False)
    d = make_disk()
    n = Counted(d, monkeypatch)
    for i in range(3):
        d.write(i * BS, pattern(i, BS))
        d.flush()
    assert n.commits == 3 and d.forest.meta_get(b"disk/log") is None
    assert_consistent(d)


def test_replay_claims_a_piece_across_free_extents_that_touch(make_disk, scratch):
    """The allocator takes touching free extents one after the other and joins
    what it hands out: one logged piece then spans two extents of the
    committed free tree (found by a read-only server beside a writer)."""
    d = make_disk(4 * MiB)
    d.write(0, pattern(1, MiB))
    d.checkpoint()
    with d.lock:
        start, n = next(iter(d.alloc.free.items()))
        assert n > 8
        # Two free extents that touch, as commits can leave them.
        d.alloc.free.delete(start)
        d.alloc.free.insert(start, 4)
        d.alloc.free.insert(start + 4, n - 4)
    d.checkpoint()
    assert list(d.alloc.free.items())[:2] == [(start, 4), (start + 4, n - 4)]
    d.write(MiB, pattern(2, 8 * BS))               # 8 blocks: one piece over both
    with d.lock:
        assert d._vba.pieces(settled(d)._lba.pieces(MiB // BS, 1)[0][1], 8)[0][1:] == (start, 8)
    d.flush()
    where = crash_copy(d, os.path.join(scratch, "c"))
    with Disk.open(where) as c:
        assert c.read(MiB, 8 * BS) == pattern(2, 8 * BS)
        assert_consistent(c)
