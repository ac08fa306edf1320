"""An interrupted conversion (SIGKILL, Ctrl-C) is finished by ``vdisk
convert --resume DISK``: every state then equals its layer, verify is
clean, and the disk uses exactly the space of an uninterrupted run - what
was written after the last checkpoint is written again into the same
place, never leaked. ``--resume`` of a complete disk has nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from .util import (assert_disks_equal, build_chain, check_converted, info, ok, ok_json, one_error_line, run,
                   run_proc, scribble, unfinished, verify_clean)

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_child.py")


def mixed(count, align=1):
    return lambda rng, size, src: scribble(rng, size, count, src, align=align)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Four layers, an internal snapshot in the second, and its clean conversion."""
    d = tmp_path_factory.mktemp("resume")
    (d / "src").mkdir()
    ch = build_chain(d / "src", [
        {"name": "base.qcow2", "cmds": ["write -q -P 0x11 0 1M", "write -q -P 0x12 2M 512K"]},
        {"name": "mid.qcow2", "snapshots": {"old": ["write -q -P 0x21 256K 512K"]},
         "cmds": ["write -q -P 0x22 512K 512K", "write -q -z 2M 64K"]},
        {"name": "upper.qcow2", "cmds": mixed(8)},
        {"name": "top.qcow2", "cmds": mixed(6, align=4096)},
    ], seed=11)
    clean = str(d / "clean.vdisk")
    ok("convert", ch.top, clean)
    # Checked against qemu once; each resumed disk is then compared with it.
    (d / "exp").mkdir()
    check_converted(clean, ch, d / "exp")
    return ch, clean


def child(mode, n, *args):
    """Run convert_child.py; its temporary files go to a directory of their
    own, which must be empty once it is dead and its qemu-nbd gone."""
    tmp = tempfile.mkdtemp(prefix="vdisk-child-tmp-")
    try:
        r = subprocess.run([sys.executable, CHILD, mode, str(n), *map(str, args)], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": tmp})
        # qemu-nbd (its socket is under tmp) exits once its client is gone.
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", tmp], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "a qemu-nbd outlived the converter"
            time.sleep(0.05)
        assert os.listdir(tmp) == [], os.listdir(tmp)
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish_and_check(disk, ch, clean, tmp_path, verify=False):
    conv = unfinished(disk)
    assert conv is not None
    assert set(conv) >= {"source", "layers", "states_done", "states", "state_bytes_done", "source_in_use",
                         "resume"}
    assert conv["resume"] == f"vdisk convert --resume {disk}" and conv["source_in_use"] is True
    assert conv["layers"] == [os.path.abspath(p) for p in ch.layers]
    s = ok_json("convert", "--resume", disk, *(["--verify"] if verify else []))
    assert s["layers"] == len(ch.layers) and s["snapshots"] == ch.names
    assert (s["verified_bytes"] > 0) if verify else s["verified_bytes"] is None
    assert unfinished(disk) is None
    assert_disks_equal(disk, clean)
    verify_clean(disk)
    done, clean = info(disk), info(clean)
    # No leaked space: what was written after the last checkpoint went into
    # the same blocks again.
    assert done["physical_bytes"] == clean["physical_bytes"]
    assert done["allocated_bytes"] == clean["allocated_bytes"]
    assert [x["exclusive_bytes"] for x in done["snapshots"]] == [x["exclusive_bytes"] for x in clean["snapshots"]]
    r = run("convert", "--resume", disk)
    assert r.exit_code == 0 and "nothing to convert" in r.stdout, (r.stdout, r.stderr)


# States: 0 the base, 1 mid.qcow2@old (an internal snapshot: only the blocks
# that differ are written), 2 mid.qcow2 (its current state over that one),
# 3 upper.qcow2, 4 the running point.
@pytest.mark.parametrize("n", [1, 2, 4])
def test_sigkill_inside_a_state_then_resume(chain, tmp_path, n):
    """Killed in the middle of a state, with data written after its last checkpoint."""
    ch, clean = chain
    disk = str(tmp_path / "d.vdisk")
    r = child("kill-in-state", n, "convert", ch.top, disk)
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
    conv = unfinished(disk)
    assert conv["states_done"] == n and conv["state_bytes_done"] > 0
    finish_and_check(disk, ch, clean, tmp_path)


@pytest.mark.parametrize("n", [0, 2])
def test_sigkill_between_states_then_resume(chain, tmp_path, n):
    """After the base; after the layer that holds an internal snapshot."""
    ch, clean = chain
    disk = str(tmp_path / "d.vdisk")
    r = child("kill-after-state", n, "convert", ch.top, disk)
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
    assert [s["name"] for s in info(disk)["snapshots"]] == ch.names[:n + 1]
    finish_and_check(disk, ch, clean, tmp_path)


def test_ctrl_c_says_the_disk_is_resumable(chain, tmp_path):
    ch, clean = chain
    disk = str(tmp_path / "d.vdisk")
    r = child("interrupt", 3, "convert", ch.top, disk)
    one_error_line(r, 130, "interrupted", f"vdisk convert --resume {disk}")
    finish_and_check(disk, ch, clean, tmp_path, verify=True)


def test_an_unfinished_disk_refuses_changes_until_resumed(chain, tmp_path):
    ch, _clean = chain
    disk = str(tmp_path / "d.vdisk")
    assert child("kill-after-state", 0, "convert", ch.top, disk).returncode == -9
    one_error_line(run("snapshot", "create", disk, "mine"), 5, "unfinished conversion", "--resume")
    assert "unfinished" in ok("info", disk)


def test_resume_of_a_complete_disk_has_nothing_to_do(chain, tmp_path):
    ch, _clean = chain
    disk = str(tmp_path / "d.vdisk")
    ok("convert", ch.top, disk)
    r = run_proc("convert", "--resume", disk)
    assert r.returncode == 0 and "nothing to convert" in r.stdout and not r.stderr, r
    s = ok_json("convert", "--resume", disk)
    assert s["layers"] == 0 and s["snapshots"] == []


def test_resume_after_a_layer_changed_or_vanished_refuses(tmp_path):
    ch = build_chain(tmp_path, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 256K"]},
                                {"name": "b.qcow2", "cmds": ["write -q -P 2 0 64K"]},
                                {"name": "c.qcow2", "cmds": ["write -q -P 3 0 4K"]}], seed=2)
    disk = str(tmp_path / "d.vdisk")
    assert child("kill-after-state", 0, "convert", ch.top, disk).returncode == -9
    os.utime(ch.layers[1], ns=(1, 1))
    one_error_line(run("convert", "--resume", disk), 12, "changed since the conversion started")
    os.unlink(ch.layers[1])
    one_error_line(run("convert", "--resume", disk), 3, "is gone")


@pytest.mark.parametrize("args, words", [
    (["--resume"], ["DISK only"]),
    (["--resume", "a", "b"], ["DISK only"]),
    (["--resume", "DISK", "--names", "x"], ["--names"]),
    (["--resume", "DISK", "--format", "qcow2"], ["--format"]),
    (["only-one"], ["SOURCE and DISK"]),
])
def test_resume_usage_errors(tmp_path, args, words):
    one_error_line(run("convert", *[str(tmp_path / "d") if a == "DISK" else a for a in args]), 2, *words)


def test_resume_of_a_missing_disk(tmp_path):
    one_error_line(run("convert", "--resume", tmp_path / "nope.vdisk"), 3)


def test_resume_of_a_plain_disk_has_nothing_to_do(tmp_path):
    disk = str(tmp_path / "plain.vdisk")
    ok("create", disk, "--size", "1M")
    r = run("convert", "--resume", disk, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["layers"] == 0


def test_an_interrupted_import_resumes_too(tmp_path):
    from .util import MiB, assert_same, qemu_img, qemu_io
    img = str(tmp_path / "big.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(4 * MiB))
    qemu_io(img, "qcow2", ["write -q -P 3 0 3M", "write -q -z 3M 64K"])
    disk = str(tmp_path / "i.vdisk")
    r = child("kill-in-state", 0, "import", img, disk)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert unfinished(disk)["states"] == 1
    s = ok_json("convert", "--resume", disk, "--verify")
    assert s["layers"] == 1 and s["snapshots"] == []
    ok("export", disk, tmp_path / "back.raw")
    assert_same(tmp_path / "back.raw", "raw", img, "qcow2", 4 * MiB)
    assert info(disk)["physical_bytes"] == 3 * MiB


def test_resume_of_a_disk_another_process_has_open_is_busy(chain, tmp_path):
    import vdisk
    ch, _clean = chain
    disk = str(tmp_path / "d.vdisk")
    assert child("kill-after-state", 0, "convert", ch.top, disk).returncode == -9
    with vdisk.Disk.open(disk):
        one_error_line(run_proc("convert", "--resume", disk), 5, "in use by PID")
    assert unfinished(disk)["states_done"] == 1
