"""``vdisk import``: a new disk from one image qemu-img made (raw, qcow2,
vmdk, vhdx, vdi), equal to it, holes and zeros taking no space."""

from __future__ import annotations

import os

import pytest

from .util import KiB, MiB, assert_same, info, ok, ok_json, qemu_img, qemu_io, unfinished, verify_clean

SIZE = 8 * MiB
# 1 MiB of data in two pieces, a zero write over 1 MiB, the rest never written.
WRITES = ["write -q -P 0x5a 1M 512K", "write -q -P 0xa5 5M 512K", "write -q -z 3M 1M"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vhdx", "vdi"])
def test_import_of_each_format_skips_holes_and_zeros(tmp_path, fmt):
    img = str(tmp_path / f"src.{fmt}")
    qemu_img("create", "-q", "-f", fmt, img, str(SIZE))
    qemu_io(img, fmt, WRITES)
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("import", img, disk, "--verify")
    assert s["layers"] == 1 and s["snapshots"] == [] and s["verified_bytes"] is not None
    assert s["written_bytes"] == 1 * MiB
    facts = info(disk)
    assert facts["size"] == SIZE
    assert facts["allocated_bytes"] == facts["physical_bytes"] == 1 * MiB
    assert unfinished(disk) is None
    out = str(tmp_path / "back.raw")
    ok("export", disk, out)
    assert_same(out, "raw", img, fmt)
    verify_clean(disk)


def test_import_of_a_non_sparse_raw_file_of_zeros(tmp_path):
    """A raw file whose zeros are really on disk (not holes) still imports to nothing allocated."""
    img = tmp_path / "full.raw"
    with open(img, "wb") as f:
        for _ in range(4):
            f.write(bytes(MiB))
        f.seek(2 * MiB + 4096)
        f.write(b"\x01" * 100)          # one block of data among the zeros
    assert os.stat(img).st_blocks * 512 >= 4 * MiB
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("import", img, disk, "--verify")
    assert s["zero_bytes"] >= 4 * MiB - 8 * KiB
    facts = info(disk)
    assert facts["allocated_bytes"] == facts["physical_bytes"] == 4096
    out = str(tmp_path / "back.raw")
    ok("export", disk, out)
    assert_same(out, "raw", img, "raw")


def test_import_of_a_sparse_raw_file(tmp_path):
    img = str(tmp_path / "sparse.raw")
    qemu_img("create", "-q", "-f", "raw", img, str(64 * MiB))
    qemu_io(img, "raw", ["write -q -P 3 32M 4K"])
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("import", img, disk)
    assert s["read_bytes"] <= 1 * MiB          # the holes are never read
    assert info(disk)["physical_bytes"] == 4096


def test_import_flattens_a_chain(tmp_path):
    base = str(tmp_path / "b.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, str(2 * MiB))
    qemu_io(base, "qcow2", ["write -q -P 1 0 1M"])
    top = str(tmp_path / "t.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", top)
    qemu_io(top, "qcow2", ["write -q -P 2 512K 1M", "write -q -z 0 64K"])
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("import", top, disk, "--verify")
    assert s["snapshots"] == []
    assert info(disk)["physical_bytes"] == 1536 * KiB - 64 * KiB
    out = str(tmp_path / "back.raw")
    ok("export", disk, out)
    assert_same(out, "raw", top, "qcow2")


def test_import_with_an_explicit_format(tmp_path):
    # A raw file that starts with a qcow2 header: --format raw takes it as it is.
    inner = str(tmp_path / "inner.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", inner, str(MiB))
    img = tmp_path / "odd.raw"
    img.write_bytes(open(inner, "rb").read().ljust(MiB, b"\0"))
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("import", img, disk, "--format", "raw", "--verify")
    assert info(disk)["size"] == MiB and s["written_bytes"] > 0


def test_the_text_summary(tmp_path):
    img = str(tmp_path / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(MiB))
    out = ok("import", img, tmp_path / "a.vdisk")
    assert out.startswith("imported 1 layer into ") and "(0 snapshots)" in out
