"""The anchor of an online conversion (vdisk/anchor.py), against a model.

Layers are written into the anchor and snapshotted while "clients" write,
zero and read the running point, whose unmapped ranges come from an origin
(the top layer). Each snapshot must hold exactly its layer, the running
point must read as the top overlaid by the client's writes - before and
after the merge, and across a reopen - and verify must stay clean.
"""

from __future__ import annotations

import random

import pytest

import vdisk
from vdisk.errors import AlreadyExists, Busy
from vdisk.snapshots.verify import verify

BS = 4096
SIZE = 2 << 20


class Origin:
    def __init__(self, image: bytes):
        self.image = image
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.image[offset:offset + length]


def _layers(rng, count):
    img = bytearray(SIZE)
    out = []
    for i in range(count):
        img = bytearray(img)
        for _ in range(12):
            off = rng.randrange(0, SIZE - 40000)
            n = rng.randrange(1, 40000)
            img[off:off + n] = bytes([rng.randrange(1, 255)]) * n
        if i:
            off = rng.randrange(0, SIZE - 3 * BS)
            img[off:off + 3 * BS] = bytes(3 * BS)           # a layer zeroing what is below
        out.append(bytes(img))
    return out


def _client_op(rng, d, model):
    off = rng.randrange(0, SIZE - 10000)
    n = rng.randrange(1, 10000)
    kind = rng.random()
    if kind < 0.5:
        data = rng.randbytes(n)
        d.write(off, data)
        model[off:off + n] = data
    elif kind < 0.7:
        d.zero(off, n)
        model[off:off + n] = bytes(n)
    else:
        assert d.read(off, n) == bytes(model[off:off + n])


def _ok(path):
    r = verify(path)
    assert r.ok, [str(p) for p in r.problems]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_layers_and_client_writes_stay_apart(tmp_path, seed):
    rng = random.Random(seed)
    path = str(tmp_path / "a.vdisk")
    layers = _layers(rng, 4)
    top = layers[-1]
    model = bytearray(top)                  # what clients must read
    d = vdisk.Disk.create(path, SIZE)
    d.begin_anchor(len(layers) * SIZE // BS)
    d.attach_origin(Origin(top))
    prev = bytes(SIZE)
    for i, img in enumerate(layers):
        for b in range(0, SIZE, BS):
            if img[b:b + BS] != prev[b:b + BS]:
                if img[b:b + BS] == bytes(BS):
                    d.anchor_zero(b, BS)
                else:
                    d.anchor_write(b, img[b:b + BS])
            if rng.random() < 0.05:
                _client_op(rng, d, model)
        assert d.anchor_view().read(0, SIZE) == img
        if i < len(layers) - 1:
            d.anchor_snapshot(f"L{i}")
        if i == 1:
            # A restart in the middle: the serving process attaches the origin again.
            d.close()
            _ok(path)
            d = vdisk.Disk.open(path)
            with pytest.raises(Busy, match="reads through"):
                d.read(0, SIZE)
            d.attach_origin(Origin(top))
        prev = img
    assert d.read(0, SIZE) == bytes(model)
    d.flush()
    _ok(path)
    assert d.finish_anchor() is not None
    assert not d.converting
    assert d.read(0, SIZE) == bytes(model)
    d.close()
    _ok(path)
    with vdisk.Disk.open(path) as d:
        assert d.read(0, SIZE) == bytes(model)
        for i in range(len(layers) - 1):
            assert d.open_snapshot(f"L{i}").read(0, SIZE) == layers[i]
        assert [s.name for s in d.snapshots()] == [f"L{i}" for i in range(len(layers) - 1)]
        # An ordinary disk again: snapshot, rewrite, delete a layer.
        d.create_snapshot("after")
        d.write(0, b"z" * BS)
        d.delete_snapshot("L0")
        d.wait_maintenance()
    _ok(path)


def test_what_the_anchor_forbids(tmp_path):
    path = str(tmp_path / "b.vdisk")
    with vdisk.Disk.create(path, SIZE) as d:
        d.begin_anchor(SIZE // BS)
        d.attach_origin(Origin(bytes(SIZE)))
        d.anchor_write(0, b"a" * BS)
        d.anchor_snapshot("L0")
        # The anchor still maps L0's block: L0 holds nothing alone, until the
        # next layer rewrites it.
        assert d.exclusive_blocks("L0") == 0
        d.anchor_write(0, b"b" * BS)
        assert d.exclusive_blocks("L0") == 1
        for call in (lambda: d.create_snapshot("x"), lambda: d.revert("L0"),
                     lambda: d.delete_snapshot("L0"), lambda: d.rename_snapshot("L0", "M"),
                     lambda: d.resize(2 * SIZE)):
            with pytest.raises(Busy, match="converted online"):
                call()
        with pytest.raises(AlreadyExists):
            d.begin_anchor(1)


def test_the_anchor_cannot_outgrow_its_reserve(tmp_path):
    from vdisk.errors import NoSpace
    with vdisk.Disk.create(str(tmp_path / "c.vdisk"), SIZE) as d:
        d.begin_anchor(4)
        d.anchor_write(0, b"a" * 4 * BS)
        d.anchor_write(0, b"b" * 4 * BS)        # rewrites keep their VBAs
        with pytest.raises(NoSpace, match="reserved"):
            d.anchor_write(8 * BS, b"c" * BS)
        d.write(0, b"c" * 8 * BS)               # the running point is not limited by it
