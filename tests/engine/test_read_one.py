"""The one-block read path (ReadPath._read_one, issue 13) against a model.

A 4 KiB read takes a floor in the LBA and VBA maps and a csum get instead
of the general path's piece lists; these tests check it returns what the
general path would, at extent and leaf boundaries, and that every failure
still gets the general path's answer.
"""

from __future__ import annotations

import random

import pytest

from vdisk.errors import IntegrityError

from .util import pattern, settled

BS = 4096


def test_single_block_reads_match_a_model_across_many_leaves(make_disk):
    blocks = 4096
    d = make_disk(blocks * BS)
    rng = random.Random(13)
    model = {}
    # Scattered writes of 1-3 blocks: thousands of extents, so the maps have
    # several leaves and some floors lie in the leaf before the key's.
    for i in range(3000):
        b = rng.randrange(blocks - 3)
        n = rng.randint(1, 3)
        data = pattern(i, n * BS)
        d.write(b * BS, data)
        for j in range(n):
            model[b + j] = data[j * BS:(j + 1) * BS]
        if i == 1500:
            d.flush()
    for b in range(blocks):
        assert d.read(b * BS, BS) == model.get(b, bytes(BS)), b
    d.flush()
    for b in rng.sample(range(blocks), 500):
        assert d.read(b * BS, BS) == model.get(b, bytes(BS)), b


def test_a_missing_checksum_is_reported_by_the_general_path(make_disk):
    d = make_disk(1 << 20)
    d.write(0, pattern(1, 4 * BS))
    (_, vba, _), = settled(d)._lba.pieces(2, 1)
    d._csum.delete(vba + 0)
    with pytest.raises(IntegrityError, match=f"LBA 2: checksum of VBA {vba} is missing"):
        d.read(2 * BS, BS)
    assert d.read(BS, BS) == pattern(1, 4 * BS)[BS:2 * BS]
