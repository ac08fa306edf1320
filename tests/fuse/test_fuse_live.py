"""Snapshots, revert and resize through the CLI while mounted: the files under
the mount follow at once, open files are protected, names never mix."""

from __future__ import annotations

import errno
import json
import os

import pytest

from fuse_util import MiB, pattern, run_vdisk

SIZE = 64 * MiB


def _write(m, seed, off=MiB, length=2 * MiB):
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, pattern(seed, length), off)
    finally:
        os.close(fd)


def _read(path, off=MiB, length=2 * MiB) -> bytes:
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(length)


def _snapshots(m) -> list[str]:
    return sorted(os.listdir(os.path.join(m.mp, "snapshots")))


def test_snapshots_appear_and_disappear_and_names_never_mix(disk, mount):
    m = mount(disk)
    assert _snapshots(m) == []
    # A name looked up before it exists: the kernel caches the miss.
    with pytest.raises(FileNotFoundError):
        os.stat(m.snap("s1"))
    _write(m, 1)
    run_vdisk("snapshot", "create", disk, "s1")
    assert _snapshots(m) == ["s1.img"]
    st1 = os.stat(m.snap("s1"))
    assert st1.st_size == SIZE and st1.st_blocks * 512 == 2 * MiB
    assert _read(m.snap("s1")) == pattern(1, 2 * MiB)
    _write(m, 2)
    assert _read(m.snap("s1")) == pattern(1, 2 * MiB)        # the snapshot does not follow the disk
    assert _read(m.image) == pattern(2, 2 * MiB)
    names = [s["name"] for s in json.loads(run_vdisk("snapshot", "list", disk, "--json").stdout)]
    assert names == ["s1"]

    # An open snapshot file cannot be deleted from under its reader.
    f = open(m.snap("s1"), "rb")
    r = run_vdisk("snapshot", "delete", disk, "s1", check=False)
    assert r.returncode == 5 and "open" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f.read(16) == bytes(16)
    f.close()
    run_vdisk("snapshot", "delete", disk, "s1")
    assert _snapshots(m) == []
    with pytest.raises(FileNotFoundError):
        os.stat(m.snap("s1"))

    # The same name again is a new file with the new contents.
    run_vdisk("snapshot", "create", disk, "s1")
    st2 = os.stat(m.snap("s1"))
    assert st2.st_ino != st1.st_ino
    assert _read(m.snap("s1")) == pattern(2, 2 * MiB)
    run_vdisk("snapshot", "create", disk, "s2")
    assert _snapshots(m) == ["s1.img", "s2.img"]


def test_revert_is_refused_while_disk_img_is_open_and_then_shows_the_snapshot(disk, mount):
    m = mount(disk)
    _write(m, 1)
    run_vdisk("snapshot", "create", disk, "base")
    _write(m, 2)
    with open(m.image, "rb") as f:
        assert _read(m.image) == pattern(2, 2 * MiB)     # cached by the kernel
        r = run_vdisk("snapshot", "revert", disk, "base", check=False)
        assert r.returncode == 5 and "close it before reverting" in r.stderr
        f.seek(MiB)
        assert f.read(16) == pattern(2, 16)
    run_vdisk("snapshot", "revert", disk, "base")
    assert _read(m.image) == pattern(1, 2 * MiB)
    assert os.stat(m.image).st_blocks * 512 == 2 * MiB


def test_resize_while_mounted_grows_disk_img(disk, mount):
    m = mount(disk)
    assert os.stat(m.image).st_size == SIZE
    run_vdisk("resize", disk, "96M")
    assert os.stat(m.image).st_size == 96 * MiB
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, b"grown", 90 * MiB)
        assert os.pread(fd, 5, 90 * MiB) == b"grown"
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 96 * MiB)
        assert e.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    info = json.loads(run_vdisk("info", disk, "--json").stdout)
    assert info["size"] == 96 * MiB and info["allocated_bytes"] == 4096


BS = 4096
BLOCKS = 1024          # the writer's 4 MiB working set


def _stamps(path) -> list[int]:
    data = _read(path, 0, BLOCKS * BS)
    out = []
    for b in range(BLOCKS):
        block = data[b * BS:(b + 1) * BS]
        stamp = int.from_bytes(block[:8], "little")
        assert block == (pattern(stamp, BS) if stamp else bytes(BS)), f"block {b} of {path} is torn or foreign"
        out.append(stamp)
    return out


def _prefix_length(stamps, log, lo, hi):
    """The L in [lo, hi] such that the first L writes give exactly ``stamps``."""
    model = [0] * BLOCKS
    for i in range(lo):
        model[log[i]] = i + 1
    for n in range(lo, hi + 1):
        if model == stamps:
            return n
        if n < len(log):
            model[log[n]] = n + 1
    return None


def test_snapshots_taken_during_writes_hold_exactly_the_writes_that_returned(disk, mount):
    import random
    import threading
    import time
    m = mount(disk)
    state = {"log": [], "started": 0, "completed": 0, "error": None}
    stop = threading.Event()

    def writer():
        rng = random.Random(3)
        fd = os.open(m.image, os.O_RDWR)
        try:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                i = len(state["log"])
                blk = rng.randrange(BLOCKS)
                state["log"].append(blk)
                state["started"] = i + 1
                os.pwrite(fd, pattern(i + 1, BS), blk * BS)
                state["completed"] = i + 1
        except Exception as e:   # reported by the test thread
            state["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    taken = {}
    try:
        for k in range(3):
            time.sleep(0.2)
            lo = state["completed"]
            run_vdisk("snapshot", "create", disk, f"live{k}")
            taken[f"live{k}"] = (lo, state["started"])
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive() and state["error"] is None, state["error"]
    assert state["completed"] > 100, "the writer hardly ran; the test proves nothing"
    for name, (lo, hi) in taken.items():
        n = _prefix_length(_stamps(m.snap(name)), state["log"], lo, hi)
        assert n is not None, f"snapshot {name} is not the disk after any prefix of writes {lo}..{hi}"
    done = state["completed"]
    assert _prefix_length(_stamps(m.image), state["log"], done, done) == done
