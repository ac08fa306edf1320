"""Bytes through a real mount: dd/cmp, pread/pwrite at odd offsets, qemu-img,
hole punching, SEEK_DATA/SEEK_HOLE, st_blocks, and durability."""

from __future__ import annotations

import json
import os
import random
import subprocess

from fuse_util import MiB, pattern, run_vdisk

from vdisk import Disk

SIZE = 64 * MiB


def _dd(*args):
    subprocess.run(["dd", "status=none", *args], check=True, timeout=60)


def _cmp(a, b, *args):
    return subprocess.run(["cmp", *args, a, b], capture_output=True, text=True, timeout=60)


def test_dd_patterns_read_back_with_cmp_and_survive_umount(disk, mount, tmp_path):
    m = mount(disk)
    assert os.stat(m.image).st_size == SIZE
    src = tmp_path / "pattern"
    src.write_bytes(b"".join(pattern(i, 64 * 1024) for i in range(48)))    # 3 MiB, distinct chunks
    _dd(f"if={src}", f"of={m.image}", "bs=1M", "seek=5", "conv=notrunc")
    _dd(f"if={src}", f"of={m.image}", "bs=4096", "seek=3001", "conv=notrunc,fsync")
    out = tmp_path / "back"
    _dd(f"if={m.image}", f"of={out}", "bs=1M", "skip=5", "count=3")
    assert _cmp(src, out).returncode == 0
    _dd(f"if={m.image}", f"of={out}", "bs=4096", "skip=3001", "count=768")
    assert _cmp(src, out).returncode == 0
    # Untouched ranges read as zeros.
    with open(m.image, "rb") as f:
        assert f.read(5 * MiB) == bytes(5 * MiB)
    m.umount()
    with Disk.open(disk) as d:
        assert d.read(5 * MiB, 3 * MiB) == src.read_bytes()
        assert d.read(3001 * 4096, 3 * MiB) == src.read_bytes()


def test_pread_pwrite_at_odd_offsets_match_a_model(disk, mount):
    m = mount(disk)
    model = bytearray(SIZE)
    rng = random.Random(6)
    fd = os.open(m.image, os.O_RDWR)
    try:
        for i in range(60):
            off = rng.choice([rng.randrange(SIZE - 300_000), rng.randrange(16) * 4096 - 1 + 4096,
                              SIZE - rng.randrange(1, 9000)])
            length = min(rng.choice([1, 7, 511, 4095, 4097, 12_345, 200_001]), SIZE - off)
            data = pattern(i + 1, length)
            assert os.pwrite(fd, data, off) == length
            model[off:off + length] = data
            if i % 7 == 0:
                os.fsync(fd)
            a = rng.randrange(SIZE - 70_000)
            n = rng.randrange(1, 70_000)
            assert os.pread(fd, n, a) == bytes(model[a:a + n])
        assert os.pread(fd, 10, SIZE - 3) == bytes(model[-3:])    # short read at the end
        assert os.pread(fd, 10, SIZE) == b""                      # end of file
    finally:
        os.close(fd)
    with open(m.image, "rb") as f:
        assert f.read() == bytes(model)
    m.umount()
    with Disk.open(disk, readonly=True) as d:
        assert d.read(0, SIZE) == bytes(model)


def test_qemu_img_info_and_compare_on_disk_and_snapshot(disk, mount, tmp_path):
    m = mount(disk)
    with open(m.image, "r+b") as f:
        f.seek(2 * MiB)
        f.write(pattern(1, MiB))
    ref = tmp_path / "ref.raw"
    _dd(f"if={m.image}", f"of={ref}", "bs=1M", "conv=sparse")
    run_vdisk("snapshot", "create", disk, "before")
    with open(m.image, "r+b") as f:
        f.seek(2 * MiB + 100)
        f.write(b"changed")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", m.image], capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    assert info["format"] == "raw" and info["virtual-size"] == SIZE
    snap_info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", m.snap("before")],
                                          capture_output=True, text=True, check=True, timeout=60).stdout)
    assert snap_info["virtual-size"] == SIZE
    same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(ref), m.snap("before")],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode == 0, same.stdout + same.stderr
    differ = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(ref), m.image],
                            capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1, differ.stdout + differ.stderr
    # qemu-img names the start of the first differing sector.
    assert int(differ.stdout.split("offset")[1].strip(" !\n")) == (2 * MiB + 100) // 512 * 512


def _allocated(disk) -> int:
    return json.loads(run_vdisk("info", disk, "--json").stdout)["allocated_bytes"]


def test_punch_hole_trims_and_seek_data_hole_and_st_blocks_are_true(disk, mount):
    m = mount(disk)
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, pattern(2, 8 * MiB), 4 * MiB)          # data at [4M, 12M)
        os.pwrite(fd, b"x", 40 * MiB + 5)                     # one block at 40M
        assert os.fstat(fd).st_blocks * 512 == 8 * MiB + 4096 == _allocated(disk)
        # A hole in the middle, with unaligned edges (zeroed, not unmapped).
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        punch = 0x02 | 0x01          # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        r = libc.fallocate(fd, punch, ctypes.c_int64(6 * MiB + 100), ctypes.c_int64(2 * MiB))
        assert r == 0, os.strerror(ctypes.get_errno())
        assert os.pread(fd, 2 * MiB, 6 * MiB + 100) == bytes(2 * MiB)
        assert os.pread(fd, 100, 6 * MiB) == pattern(2, 8 * MiB)[2 * MiB:2 * MiB + 100]
        assert os.fstat(fd).st_size == SIZE
        st_blocks = os.fstat(fd).st_blocks
        assert st_blocks * 512 == _allocated(disk) == 8 * MiB + 4096 - (2 * MiB - 4096)
        assert os.lseek(fd, 0, os.SEEK_DATA) == 4 * MiB
        assert os.lseek(fd, 4 * MiB, os.SEEK_HOLE) == 6 * MiB + 4096
        assert os.lseek(fd, 6 * MiB + 4096, os.SEEK_DATA) == 8 * MiB
        assert os.lseek(fd, 9 * MiB, os.SEEK_HOLE) == 12 * MiB
        assert os.lseek(fd, 12 * MiB, os.SEEK_DATA) == 40 * MiB
        assert os.lseek(fd, 40 * MiB + 4096, os.SEEK_HOLE) == 40 * MiB + 4096
        assert os.lseek(fd, 41 * MiB, os.SEEK_HOLE) == 41 * MiB
        try:
            os.lseek(fd, 41 * MiB, os.SEEK_DATA)
            raise AssertionError("SEEK_DATA past the last data must fail with ENXIO")
        except OSError as e:
            assert e.errno == 6   # ENXIO
    finally:
        os.close(fd)
    # cp --sparse=always sees the holes through SEEK_DATA/SEEK_HOLE, du through st_blocks.
    du = subprocess.run(["du", "-k", m.image], capture_output=True, text=True, check=True).stdout
    assert int(du.split()[0]) * 1024 == st_blocks * 512


def test_fsync_is_durable_when_the_mount_process_is_killed(disk, mount):
    m = mount(disk)
    fd = os.open(m.image, os.O_RDWR)
    os.pwrite(fd, pattern(9, 300_000), 777)
    os.fsync(fd)
    os.close(fd)
    m.kill9()
    r = run_vdisk("umount", m.mp)
    assert "stale" in r.stdout and "mount process had died" in r.stdout
    with Disk.open(disk) as d:
        assert d.read(777, 300_000) == pattern(9, 300_000)
