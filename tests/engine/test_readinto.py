"""Reader.readinto (NBD's pread, issue 13): the blocks of a request read
straight into the caller's buffer must be exactly what read() returns, and
every refusal read() makes, readinto makes too."""

from __future__ import annotations

import random

import pytest

from vdisk.errors import ChecksumMismatch, InvalidArgument

from .util import damage_data, pattern, settled

BS = 4096


def _scattered(d, blocks: int, seed: int) -> bytearray:
    """Writes of 1-5 blocks and trims over ``blocks``, some flushed: holes,
    extents, recent one-block writes. Returns the model."""
    rng = random.Random(seed)
    model = bytearray(blocks * BS)
    for i in range(400):
        b = rng.randrange(blocks - 5)
        n = rng.randint(1, 5)
        if i % 11 == 10:
            d.trim(b * BS, n * BS)
            model[b * BS:(b + n) * BS] = bytes(n * BS)
        else:
            data = pattern(i, n * BS)
            d.write(b * BS, data)
            model[b * BS:(b + n) * BS] = data
        if i % 97 == 96:
            d.flush()
    return model


def test_aligned_and_unaligned_requests_fill_the_buffer_with_what_read_returns(make_disk):
    blocks = 256
    d = make_disk(blocks * BS)
    model = _scattered(d, blocks, 7)
    rng = random.Random(8)
    cases = [(0, BS), (0, blocks * BS), (3 * BS, 17 * BS), (BS + 100, 5000), (blocks * BS - 10, 10), (0, 0)]
    cases += [(rng.randrange(blocks) * BS, rng.randint(1, 8) * BS) for _ in range(60)]
    cases += [(o, rng.randint(1, 3 * BS)) for o in (rng.randrange(blocks * BS - 4 * BS) for _ in range(60))]
    for offset, length in cases:
        length = min(length, blocks * BS - offset)
        want = bytes(model[offset:offset + length])
        assert d.read(offset, length) == want, (offset, length)
        # A slice of a larger buffer, as nbdkit's may be: only the slice changes.
        big = bytearray(b"\xaa" * (length + 2 * BS))
        d.readinto(offset, memoryview(big)[BS:BS + length])
        assert big[BS:BS + length] == want, (offset, length)
        assert big[:BS] == b"\xaa" * BS and big[BS + length:] == b"\xaa" * BS


def test_a_snapshot_reads_into_a_buffer_as_it_was_taken(make_disk):
    d = make_disk(64 * BS)
    model = _scattered(d, 64, 9)
    d.create_snapshot("s")
    d.write(0, pattern(99, 64 * BS))
    with d.open_snapshot("s") as snap:
        buf = bytearray(64 * BS)
        snap.readinto(0, buf)
        assert buf == model
        one = bytearray(BS)
        snap.readinto(5 * BS, one)
        assert one == model[5 * BS:6 * BS]


@pytest.mark.parametrize("recent", [True, False], ids=["recent", "settled"])
def test_damaged_data_is_refused_through_readinto(make_disk, recent):
    d = make_disk(64 * BS)
    d.write(8 * BS, pattern(1, 4 * BS))
    d.write(9 * BS, pattern(2, BS))                      # a one-block write: the recent table
    if not recent:
        d.flush()
        settled(d)
    if recent:
        (pba, _csum), = d._recent.values()
    else:
        (_s, vba, _n), = d._lba.pieces(9, 1)
        (_v, pba, _k), = d._vba.pieces(vba, 1)
    damage_data(d, pba, BS)
    for offset, length in ((9 * BS, BS), (8 * BS, 4 * BS)):
        with pytest.raises(ChecksumMismatch, match=f"LBA 9 .byte {9 * BS}."):
            d.readinto(offset, bytearray(length))
    got = bytearray(BS)
    d.readinto(8 * BS, got)                              # its neighbours still read
    assert got == pattern(1, 4 * BS)[:BS]


def test_a_request_outside_the_disk_is_refused_and_the_buffer_untouched(make_disk):
    d = make_disk(16 * BS)
    d.write(0, pattern(3, 16 * BS))
    for offset, length in ((15 * BS, 2 * BS), (16 * BS, BS), (-BS, BS)):
        buf = bytearray(b"\x55" * length)
        with pytest.raises(InvalidArgument, match="outside the disk"):
            d.readinto(offset, buf)
        assert buf == b"\x55" * length
