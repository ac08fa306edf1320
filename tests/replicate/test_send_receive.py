"""send and receive: round trips byte for byte, and every way a stream can
go wrong leaving the target as it was (or, cut short, resumable)."""

from __future__ import annotations

import io
import os
import random

import pytest

from vdisk import Disk
from vdisk.errors import AlreadyExists, Busy, InvalidArgument, NotFound, UnsupportedVersion
from vdisk.replicate import identity
from vdisk.replicate import receive as rx
from vdisk.replicate import stream
from vdisk.replicate.send import send
from vdisk.replicate.staging import DIR as STAGING
from vdisk.replicate.stream import StreamDamaged, StreamReader, StreamTruncated
from vdisk.snapshots.diff import diff
from vdisk.snapshots.verify import verify

BS = 4096
MiB = 1 << 20
SIZE = 8 * MiB


def make_source(path, seed=1):
    """A disk with snapshots s1..s4: data, rewrites, trims, zeros written, a grow."""
    rng = random.Random(seed)
    with Disk.create(path, SIZE, BS) as d:
        d.write(0, rng.randbytes(3 * MiB))
        d.write(5 * MiB, rng.randbytes(MiB + 1234))
        d.create_snapshot("s1")
        for _ in range(20):
            off = rng.randrange(0, SIZE - 64 * 1024)
            d.write(off, rng.randbytes(rng.randrange(1, 64 * 1024)))
        d.zero(MiB, 256 * 1024)
        d.write(6 * MiB + 4096, bytes(MiB + 8192))     # zeros written as data: they go as ZERO
        d.create_snapshot("s2")
        d.resize(SIZE + 2 * MiB)
        d.write(SIZE + MiB, rng.randbytes(100_000))
        d.create_snapshot("s3")
        d.trim(0, 2 * MiB)
        d.create_snapshot("s4")


def stream_of(src, name, base=None, token=None) -> bytes:
    out = io.BytesIO()
    with Disk.open(src, readonly=True) as d:
        send(d, name, out, base=base, resume_token=token)
    return out.getvalue()


def boundaries(buf: bytes) -> list[int]:
    """The byte offset where each record ends."""
    r = StreamReader(io.BytesIO(buf))
    ends = []
    while True:
        rec = r.next()
        ends.append(r.bytes_read)
        if rec.type == stream.END:
            return ends


def state(path):
    """What a user can see of a disk: its snapshots, their contents and the running point's."""
    if not os.path.exists(path):
        return None
    with Disk.open(path, readonly=True) as d:
        snaps = [(r.name, r.created_ns, r.seq) for r in d.snapshot_records()]
        return snaps, [d.open_snapshot(n).read(0, d.snapshot_record(n).size) for n, _, _ in snaps], \
            d.read(0, d.size)


def same_snapshot(a_path, b_path, name):
    with Disk.open(a_path, readonly=True) as a, Disk.open(b_path, readonly=True) as b:
        va, vb = a.open_snapshot(name), b.open_snapshot(name)
        assert va.size == vb.size
        assert va.read(0, va.size) == vb.read(0, vb.size), name
        # Holes stay holes (no more allocated than at the source, zeros sent as ZERO).
        got = sum(e.length for e in vb.block_status(0, vb.size) if e.allocated)
        have = sum(e.length for e in va.block_status(0, va.size) if e.allocated)
        assert got <= have


@pytest.fixture
def src(scratch):
    path = os.path.join(scratch, "src")
    make_source(path)
    return path


@pytest.fixture
def dst(scratch):
    return os.path.join(scratch, "dst")


def test_full_then_incrementals_recreate_every_snapshot(src, dst):
    base = None
    for name in ("s1", "s2", "s3", "s4"):
        s = rx.receive(dst, io.BytesIO(stream_of(src, name, base)))
        assert (s.name, s.base) == (name, base)
        same_snapshot(src, dst, name)
        base = name
    report = verify(dst, data=True)
    assert report.ok, report.problems
    with Disk.open(dst, readonly=True) as d:
        assert [r.name for r in d.snapshot_records()] == ["s1", "s2", "s3", "s4"]
        assert not os.path.exists(os.path.join(dst, STAGING))


def test_incremental_size_follows_the_change(src):
    """The stream covers exactly the changed ranges, and is barely larger than the data it carries."""
    for base, name in ((None, "s1"), ("s1", "s2"), ("s2", "s3"), ("s3", "s4")):
        out = io.BytesIO()
        with Disk.open(src, readonly=True) as d:
            changed = diff(d, base or "-", name)
            s = send(d, name, out, base=base)
        assert s.data_bytes + s.zero_bytes == changed.data_bytes + changed.hole_bytes
        assert s.data_bytes <= changed.data_bytes
        overhead = len(out.getvalue()) - s.data_bytes
        # BEGIN and END about 300 bytes, 64 bytes of framing a record.
        assert overhead <= 400 + s.records * 80, (name, overhead, s.records)
        if name == "s2":
            # The zeros s2 wrote as data went as ZERO records, not as data.
            assert s.zero_bytes >= MiB


def test_a_replica_sends_on_to_a_third_disk(src, dst, scratch):
    third = os.path.join(scratch, "third")
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    rx.receive(third, io.BytesIO(stream_of(dst, "s1")))
    # The third disk's s1 carries the source's id: an incremental from the source applies.
    rx.receive(third, io.BytesIO(stream_of(src, "s2", "s1")))
    same_snapshot(src, third, "s2")


@pytest.mark.parametrize("where", ["begin", "inside", "record", "before-end", "no-end"])
def test_a_truncated_stream_publishes_nothing_and_resumes(src, dst, where):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    before = state(dst)
    buf = stream_of(src, "s2", "s1")
    ends = boundaries(buf)
    cut = {"begin": ends[0] - 5, "inside": ends[1] + 100, "record": ends[2], "before-end": ends[-2],
           "no-end": len(buf) - 1}[where]
    with pytest.raises(StreamTruncated):
        rx.receive(dst, io.BytesIO(buf[:cut]))
    assert state(dst) == before
    if where == "begin":
        assert not os.path.exists(os.path.join(dst, STAGING))
        rx.receive(dst, io.BytesIO(buf))
    else:
        with pytest.raises(Busy):
            rx.receive(dst, io.BytesIO(buf))
        token = rx.resume_token(dst)
        rest = stream_of(src, "s2", "s1", token=token["token"])
        assert len(rest) <= len(buf)
        s = rx.receive(dst, io.BytesIO(rest), resume=True)
        assert s.resumed_from == token["offset"]
    same_snapshot(src, dst, "s2")
    assert verify(dst, data=True).ok


def test_resume_from_the_whole_stream_again(src, dst):
    """A sender that ignores the token and sends everything again: the part
    already staged is checked and skipped."""
    buf = stream_of(src, "s1")
    ends = boundaries(buf)
    with pytest.raises(StreamTruncated):
        rx.receive(dst, io.BytesIO(buf[:ends[2] + 7]))
    assert rx.resume_token(dst)["offset"] > 0
    rx.receive(dst, io.BytesIO(buf), resume=True)
    same_snapshot(src, dst, "s1")


def test_a_full_stream_into_an_existing_empty_disk_is_staged_and_resumes(src, dst):
    with Disk.create(dst, SIZE // 2, BS):
        pass
    buf = stream_of(src, "s1")
    ends = boundaries(buf)
    with pytest.raises(StreamTruncated):
        rx.receive(dst, io.BytesIO(buf[:ends[3] + 9]))
    with Disk.open(dst, readonly=True) as d:
        assert d.allocated_bytes() == 0 and not d.snapshot_records()
    assert not rx.resume_token(dst)["phase"] == "applying"
    tok = rx.resume_token(dst)["token"]
    rx.receive(dst, io.BytesIO(stream_of(src, "s1", token=tok)), resume=True)
    same_snapshot(src, dst, "s1")
    with Disk.open(dst, readonly=True) as d:
        assert d.size == SIZE


def test_a_full_stream_cut_short_into_a_new_disk_can_be_aborted(src, dst):
    buf = stream_of(src, "s1")
    with pytest.raises(StreamTruncated):
        rx.receive(dst, io.BytesIO(buf[:len(buf) // 2]))
    out = rx.abort(dst)
    assert out["removed_disk"] and not os.path.exists(dst)
    with pytest.raises(NotFound):
        rx.abort(os.path.join(os.path.dirname(dst), "nothing-here"))


def flips(buf: bytes, rng: random.Random, n: int) -> list[int]:
    """Positions to flip: each field of the first records and END, and random others."""
    ends = [0] + boundaries(buf)
    spots = set()
    for a in ends[:4] + ends[-3:-1]:
        spots.update(p for p in (a, a + 4, a + 6, a + 8, a + 16, a + 17, a + 21, a + 24, a + 30) if p < len(buf))
    spots.update(rng.randrange(len(buf)) for _ in range(n))
    spots.add(len(buf) - 1)
    return sorted(spots)


def test_every_flipped_byte_is_refused_and_the_target_stays(src, dst):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    before = state(dst)
    buf = stream_of(src, "s2", "s1")
    rng = random.Random(7)
    for pos in flips(buf, rng, 25):
        bad = bytearray(buf)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises((StreamDamaged, UnsupportedVersion)):
            rx.receive(dst, io.BytesIO(bytes(bad)))
        if os.path.exists(os.path.join(dst, STAGING)):
            # Only a flipped length can make a good stream look cut short; drop it.
            rx.abort(dst)
        assert state(dst) == before, pos
    rx.receive(dst, io.BytesIO(buf))
    same_snapshot(src, dst, "s2")


def test_a_damaged_full_stream_leaves_no_disk(src, dst):
    buf = bytearray(stream_of(src, "s1"))
    buf[boundaries(bytes(buf))[1] + 50] ^= 0x10
    with pytest.raises(StreamDamaged):
        rx.receive(dst, io.BytesIO(bytes(buf)))
    assert not os.path.exists(dst)


def test_reordered_dropped_and_spliced_records_are_refused(src, dst):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    before = state(dst)
    buf = stream_of(src, "s2", "s1")
    e = [0] + boundaries(buf)
    recs = [buf[a:b] for a, b in zip(e, e[1:])]
    assert len(recs) >= 5
    swapped = recs[:1] + [recs[2], recs[1]] + recs[3:]
    dropped = recs[:2] + recs[3:]
    other = stream_of(src, "s3", "s2")
    o = [0] + boundaries(other)
    spliced = recs[:2] + [other[o[2]:o[3]]] + recs[3:]
    doubled = recs + recs
    for bad in (swapped, dropped, spliced, doubled):
        with pytest.raises(StreamDamaged):
            rx.receive(dst, io.BytesIO(b"".join(bad)))
        assert state(dst) == before
        assert not os.path.exists(os.path.join(dst, STAGING))


def test_damage_in_a_resumed_receive_goes_back_to_where_it_was(src, dst):
    buf = stream_of(src, "s1")
    ends = boundaries(buf)
    with pytest.raises(StreamTruncated):
        rx.receive(dst, io.BytesIO(buf[:ends[1]]))
    token = rx.resume_token(dst)
    bad = bytearray(buf)
    bad[ends[2] + 40] ^= 1
    with pytest.raises(StreamDamaged):
        rx.receive(dst, io.BytesIO(bytes(bad)), resume=True)
    assert rx.resume_token(dst) == token
    rx.receive(dst, io.BytesIO(stream_of(src, "s1", token=token["token"])), resume=True)
    same_snapshot(src, dst, "s1")


def test_an_incremental_needs_the_very_base(src, dst, scratch):
    buf = stream_of(src, "s2", "s1")
    with pytest.raises(NotFound, match="does not exist"):
        rx.receive(dst, io.BytesIO(buf))
    assert not os.path.exists(dst)
    with Disk.create(dst, SIZE, BS) as d:
        pass
    with pytest.raises(NotFound, match="no snapshot 's1'"):
        rx.receive(dst, io.BytesIO(buf))
    # Another snapshot called s1: refused by id.
    with Disk.open(dst) as d:
        d.create_snapshot("s1")
    before = state(dst)
    with pytest.raises(InvalidArgument, match="not the stream's base"):
        rx.receive(dst, io.BytesIO(buf))
    assert state(dst) == before
    # The right base, deleted and taken again: refused too.
    other = os.path.join(scratch, "other")
    rx.receive(other, io.BytesIO(stream_of(src, "s1")))
    with Disk.open(other) as d:
        d.delete_snapshot("s1")
        d.create_snapshot("s1")
    with pytest.raises(InvalidArgument, match="not the stream's base"):
        rx.receive(other, io.BytesIO(buf))


def test_the_base_renamed_keeps_its_id_and_a_changed_running_point_is_refused(src, dst):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    with Disk.open(dst) as d:
        d.rename_snapshot("s1", "tmp")
        d.rename_snapshot("tmp", "s1")
        d.write(0, b"local change")
    with pytest.raises(InvalidArgument, match="running point .* has changed"):
        rx.receive(dst, io.BytesIO(stream_of(src, "s2", "s1")))
    with Disk.open(dst) as d:
        d.revert("s1")
    rx.receive(dst, io.BytesIO(stream_of(src, "s2", "s1")))
    same_snapshot(src, dst, "s2")


def test_refusals_before_any_work(src, dst):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    with pytest.raises(AlreadyExists):
        rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    with pytest.raises(StreamDamaged, match="not a vdisk replication stream"):
        rx.receive(dst, io.BytesIO(b"qcow2 image, not a stream" * 10))
    with pytest.raises(InvalidArgument, match="holds data"):
        rx.receive(dst, io.BytesIO(stream_of(src, "s2")))
    token = stream.encode_token(b"\1" * 16, b"\2" * 16, 0)
    with Disk.open(src, readonly=True) as d:
        with pytest.raises(InvalidArgument, match="another stream"):
            send(d, "s2", io.BytesIO(), base="s1", resume_token=token)
        with pytest.raises(InvalidArgument, match="bad resume token"):
            send(d, "s2", io.BytesIO(), base="s1", resume_token=token[:-1] + "x")
        with pytest.raises(NotFound):
            send(d, "nope", io.BytesIO())


def test_a_newer_stream_version_is_refused_by_name(src, dst):
    h = stream.Header("s", SIZE, BS, 1, b"\1" * 16, version=2)
    out = io.BytesIO()
    w = stream.StreamWriter(out)
    w.begin(h)
    with pytest.raises(UnsupportedVersion, match="version 2"):
        rx.receive(dst, io.BytesIO(out.getvalue()))
    assert not os.path.exists(dst)


def test_a_crash_during_apply_is_finished_by_resume(src, dst, monkeypatch):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")))
    buf = stream_of(src, "s2", "s1")
    real = Disk.create_snapshot

    def crash(self, name):
        raise KeyboardInterrupt     # the process dies after the writes, before the snapshot
    monkeypatch.setattr(Disk, "create_snapshot", crash)
    with pytest.raises(KeyboardInterrupt):
        rx.receive(dst, io.BytesIO(buf))
    monkeypatch.setattr(Disk, "create_snapshot", real)
    assert rx.resume_token(dst)["phase"] == "applying"
    with Disk.open(dst) as d:
        d.write(0, b"written meanwhile")        # the running point is the receive's until it is done
    s = rx.receive(dst, io.BytesIO(b""), resume=True)
    assert s.applied_bytes > 0
    same_snapshot(src, dst, "s2")
    assert verify(dst, data=True).ok


def test_resume_with_no_receive_in_progress(src, dst):
    rx.receive(dst, io.BytesIO(stream_of(src, "s1")), resume=True)   # nothing to resume: a fresh receive
    with pytest.raises(NotFound):
        rx.resume_token(dst)
    with Disk.open(src, readonly=True) as d:
        tok = stream.encode_token(identity.snapshot_id(d, "s2"), identity.snapshot_id(d, "s1"), MiB)
    with pytest.raises(InvalidArgument, match="no receive in progress"):
        rx.receive(dst, io.BytesIO(stream_of(src, "s2", "s1", token=tok)))


def test_stream_module_round_trips_its_records():
    out = io.BytesIO()
    w = stream.StreamWriter(out)
    h = stream.Header("n", 10 * BS, BS, 5, b"\3" * 16, "b", b"\4" * 16, 4, BS, 3 * BS)
    w.begin(h)
    w.data(BS, b"x" * BS)
    w.zero(5 * BS, 2 * BS)
    w.end()
    r = StreamReader(io.BytesIO(out.getvalue()))
    assert r.next().header == h
    d = r.next()
    assert (d.type, d.offset, bytes(d.data)) == (stream.DATA, BS, b"x" * BS)
    z = r.next()
    assert (z.type, z.offset, z.length) == (stream.ZERO, 5 * BS, 2 * BS)
    assert r.next().totals == (2, BS, 2 * BS)
    assert w.bytes_written == len(out.getvalue())
    # A record before the resume offset, or out of the snapshot, is out of place.
    for off in (0, 10 * BS):
        out = io.BytesIO()
        w = stream.StreamWriter(out)
        w.begin(h)
        w.data(off, b"y" * BS)
        r = StreamReader(io.BytesIO(out.getvalue()))
        r.next()
        with pytest.raises(StreamDamaged, match="out of order or outside"):
            r.next()
