"""Standard NBD clients against ``vdisk serve``: each one's view must match a
plain bytearray model of what was written."""

from __future__ import annotations

import json
import os
import subprocess

from nbd_util import MiB, pattern

SIZE = 64 * MiB


def _run(*argv, timeout=120):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv[0]} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return r.stdout


def _read_all(served, export=""):
    h = served.connect(export)
    try:
        size = h.get_size()
        return b"".join(h.pread(min(4 * MiB, size - off), off) for off in range(0, size, 4 * MiB))
    finally:
        h.shutdown()


def _allocated(path):
    return os.stat(path).st_blocks * 512


def test_qemu_io_patterns_read_back_through_every_client_path(disk, serve):
    s = serve(disk)
    model = bytearray(SIZE)
    # (offset, length, byte): aligned, misaligned, straddling blocks, at the very end.
    writes = [(0, 65536, 0x11), (100_000, 5000, 0x22), (4095, 2, 0x33), (1 * MiB, 3 * MiB, 0x44),
              (SIZE - 4096, 4096, 0x55), (2 * MiB + 17, 100, 0x66)]
    cmds = []
    for off, ln, byte in writes:
        cmds += ["-c", f"write -P {byte} {off} {ln}"]
        model[off:off + ln] = bytes([byte]) * ln
    cmds += ["-c", f"write -z {3 * MiB} {256 * 1024}", "-c", f"discard {int(3.5 * MiB)} {64 * 1024}"]
    model[3 * MiB:3 * MiB + 256 * 1024] = bytes(256 * 1024)
    model[int(3.5 * MiB):int(3.5 * MiB) + 64 * 1024] = bytes(64 * 1024)
    cmds += ["-c", "flush"]
    out = _run("qemu-io", "-f", "raw", *cmds, s.uri())
    assert "failed" not in out.lower()
    # qemu-io's own pattern check of what it wrote (where the zeroing left it).
    out = _run("qemu-io", "-f", "raw", "-c", "read -P 0x11 0 4095", "-c", "read -P 0x33 4095 2", "-c", "read -P 0x22 100000 5000",
               "-c", f"read -P 0 {3 * MiB} {256 * 1024}", "-c", f"read -P 0x55 {SIZE - 4096} 4096", s.uri())
    assert "Pattern verification failed" not in out
    assert _read_all(s) == model


def test_qemu_img_convert_and_map_match_the_model_and_skip_holes(disk, serve, tmp_path):
    s = serve(disk)
    model = bytearray(SIZE)
    h = s.connect()
    for i, off in enumerate((0, 5 * MiB, 5 * MiB + 4096, 40 * MiB)):
        data = pattern(i + 1, 8192)
        h.pwrite(data, off)
        model[off:off + len(data)] = data
    h.flush()
    h.shutdown()
    out = tmp_path / "out.raw"
    _run("qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri(), str(out))
    assert out.read_bytes() == model
    # Zero extents were reported as such, so qemu-img left them sparse.
    assert _allocated(out) < 4 * MiB
    extents = json.loads(_run("qemu-img", "map", "--output=json", "-f", "raw", s.uri()))
    data = [(e["start"], e["length"]) for e in extents if e["data"]]
    assert data == [(0, 8192), (5 * MiB, 12288), (40 * MiB, 8192)]
    assert all(e["zero"] for e in extents if not e["data"])


def test_nbdcopy_round_trip_keeps_bytes_and_holes(disk, serve, tmp_path):
    s = serve(disk)
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(SIZE)
        for i, off in enumerate((0, 7 * MiB + 512, 33 * MiB)):
            f.seek(off)
            f.write(pattern(100 + i, 2 * MiB))
    _run("nbdcopy", str(src), s.uri())
    back = tmp_path / "back.raw"
    _run("nbdcopy", s.uri(), str(back))
    assert back.read_bytes() == src.read_bytes()
    assert _allocated(back) < 16 * MiB
    # The source's holes became holes on the disk (nbdcopy zeroed them, vdisk unmapped).
    h = s.connect()
    holes = []
    h.block_status(SIZE, 0, lambda ctx, off, entries, err: holes.extend(
        (entries[i], entries[i + 1]) for i in range(0, len(entries), 2)))
    h.shutdown()
    hole_bytes = sum(ln for ln, flags in holes if flags & 1)
    assert hole_bytes >= SIZE - 7 * MiB


def test_nbdinfo_lists_every_export_with_a_description(disk, serve):
    from nbd_util import run_vdisk
    run_vdisk("snapshot", "create", disk, "before")
    s = serve(disk)
    run_vdisk("snapshot", "create", disk, "while-serving")
    listing = json.loads(_run("nbdinfo", "--list", "--json", s.uri()))
    exports = {e["export-name"]: e for e in listing["exports"]}
    assert set(exports) == {"", "before", "while-serving"}
    assert "running point (read-write)" in exports[""]["description"]
    assert "snapshot before" in exports["before"]["description"]
    assert exports["before"]["is_read_only"] is True
    assert exports[""]["is_read_only"] is False
    assert exports[""]["block_size_preferred"] == 4096
    assert exports[""]["can_multi_conn"] is True


def test_nbdsh_runs_against_the_export(disk, serve):
    s = serve(disk)
    # nbdsh's launcher runs "python3 -m nbd" from PATH, which may be another
    # Python; the module itself is Debian's.
    out = _run("/usr/bin/python3", "-m", "nbd", "-u", s.uri(), "-c",
               "h.pwrite(b'nbdsh' * 100, 12345); h.flush(); print(h.get_size(), bytes(h.pread(5, 12345 + 5)))")
    assert out.split() == [str(SIZE), "b'nbdsh'"]


def test_fio_random_writes_verify_with_crc32c(disk, serve, tmp_path):
    s = serve(disk)
    _run("fio", "--name=verify", "--ioengine=nbd", f"--uri={s.uri()}", "--rw=randwrite", "--bs=4k",
         "--size=8M", "--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
         "--output-format=terse", f"--directory={tmp_path}")
    # Mixed sizes and a sequential pass, verified the same way.
    _run("fio", "--name=mixed", "--ioengine=nbd", f"--uri={s.uri()}", "--rw=write", "--bsrange=512-64k",
         "--offset=16M", "--size=4M", "--iodepth=4", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
         "--output-format=terse", f"--directory={tmp_path}")
