"""``--verify``'s comparison (convert/compare.py): a disk state against an
image through qemu, which must fail loudly - naming the byte - on any
difference, including data the image holds where the disk has a hole."""

from __future__ import annotations

import random

import pytest

import vdisk
from vdisk.convert.compare import VerifyFailed, compare
from vdisk.snapshots.verify_runs import subtract as _subtract
from vdisk.convert.qemu import Export

from .util import MiB, qemu_img, qemu_io


@pytest.fixture
def pair(tmp_path):
    """A disk and a qcow2 image with the same 2 MiB: data, a zero range, holes."""
    img = str(tmp_path / "img.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(2 * MiB))
    qemu_io(img, "qcow2", ["write -q -P 0x5a 4096 8192", "write -q -P 0x33 1M 64K", "write -q -z 1536K 64K"])
    path = str(tmp_path / "d.vdisk")
    with vdisk.Disk.create(path, 2 * MiB, 4096) as d:
        d.write(4096, b"\x5a" * 8192)
        d.write(MiB, b"\x33" * 65536)
        d.zero(1536 * 1024, 65536)
        d.flush()
    return path, img


def _compare(path, img, what="state"):
    with vdisk.Disk.open(path, readonly=True) as d, Export(img, "qcow2") as src:
        return compare(d, src, what)


def test_equal_states_compare_and_count_what_was_read(pair):
    path, img = pair
    assert _compare(path, img) >= 8192 + 65536


@pytest.mark.parametrize("offset", [4096, 4096 + 8191, MiB + 12345])
def test_one_changed_byte_in_the_image_is_named(pair, offset):
    path, img = pair
    qemu_io(img, "qcow2", [f"write -q -P 0x01 {offset} 1"])
    with pytest.raises(VerifyFailed) as e:
        _compare(path, img, "snapshot 'x'")
    assert str(e.value) == f"snapshot 'x': differs at byte {offset}"
    assert e.value.exit_code == 1


def test_data_in_the_image_where_the_disk_has_a_hole(pair):
    path, img = pair
    qemu_io(img, "qcow2", ["write -q -P 0x07 1800000 3"])
    with pytest.raises(VerifyFailed, match=r"differs at byte 1800000 \(a hole in the disk\)"):
        _compare(path, img)


def test_zeros_written_in_the_image_over_a_disk_hole_are_equal(pair):
    path, img = pair
    qemu_io(img, "qcow2", ["write -q -P 0 300K 64K", "write -q -z 700K 4K"])
    _compare(path, img)


def test_sizes_that_differ(pair, tmp_path):
    path, _img = pair
    other = str(tmp_path / "other.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", other, str(3 * MiB))
    with pytest.raises(VerifyFailed, match="sizes differ"):
        _compare(path, other)


def test_subtract_against_brute_force():
    rng = random.Random(1)

    def spans(n, limit):
        cuts = sorted(rng.sample(range(limit), min(limit, 2 * n)))
        return [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2) if cuts[i] < cuts[i + 1]]

    for _ in range(300):
        a, b = spans(rng.randrange(0, 6), 60), spans(rng.randrange(0, 6), 60)
        got = _subtract(a, b)
        want_set = {x for s, e in a for x in range(s, e)} - {x for s, e in b for x in range(s, e)}
        assert {x for s, e in got for x in range(s, e)} == want_set, (a, b, got)
        assert all(s < e for s, e in got) and got == sorted(got)
