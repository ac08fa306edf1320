"""Bad input to ``vdisk convert`` and ``vdisk import``: a missing or
unreadable layer, a loop, layers of different sizes, an encrypted or
unsupported image, a DISK that exists, bad ``--names``, a full file system.
Each is one ``vdisk: error:`` line on stderr (run as a real subprocess, so
stray log lines and tracebacks would show), the exit code of its kind, and
DISK either never created or left resumable - and the message says which."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess

import pytest

from vdisk.errors import AlreadyExists, ImageError, InvalidArgument, NoSpace, NotFound

from .util import (MiB, build_chain, check_converted, create, info, ok, ok_json, one_error_line, qemu_img, run,
                   run_proc, unfinished)

IMAGE, MISSING, EXISTS, USAGE = ImageError.exit_code, NotFound.exit_code, AlreadyExists.exit_code, \
    InvalidArgument.exit_code
assert IMAGE == 12


def small_chain(d, n=3, size=MiB):
    return build_chain(d, [{"name": f"l{i}.qcow2", "cmds": [f"write -q -P {i + 1} {i * 64 * 1024} 64K"]}
                           for i in range(n)], size=size, seed=n)


def refused(tmp_path, args, code, *words, cmd="convert", proc=False):
    """``vdisk CMD ARGS`` fails with one line and leaves the directory as it
    was. In this process (a traceback would fail the test as well), or with
    ``proc`` as a real subprocess, where stray log lines on stderr show."""
    before = sorted(os.listdir(tmp_path))
    disk = tmp_path / "new.vdisk"
    line = one_error_line((run_proc if proc else run)(cmd, *args, disk), code, *words)
    assert not os.path.lexists(disk)
    assert sorted(os.listdir(tmp_path)) == before
    assert "resum" not in line            # nothing was made, so nothing to resume
    return line


# ------------------------------------------------------------------ the chain

def test_a_missing_top_image(tmp_path):
    refused(tmp_path, [tmp_path / "nope.qcow2"], MISSING, "nope.qcow2", "no such image")


def test_a_missing_layer_below(tmp_path):
    ch = small_chain(tmp_path)
    os.unlink(ch.layers[0])
    refused(tmp_path, [ch.top], IMAGE, "l0.qcow2", proc=True)
    refused(tmp_path, [ch.top], IMAGE, "l0.qcow2", cmd="import")


def test_a_layer_of_garbage(tmp_path):
    """Unreadable, as root sees it: a layer whose bytes are not the format its child names."""
    ch = small_chain(tmp_path)
    with open(ch.layers[1], "wb") as f:
        f.write(os.urandom(256 * 1024))
    refused(tmp_path, [ch.top], IMAGE, "l1.qcow2", "not in qcow2 format", proc=True)


def test_a_layer_with_a_truncated_header(tmp_path):
    ch = small_chain(tmp_path)
    with open(ch.layers[0], "r+b") as f:
        f.truncate(40)
    refused(tmp_path, [ch.top], IMAGE, "l0.qcow2")


def test_a_chain_with_a_loop(tmp_path):
    ch = small_chain(tmp_path)
    # The base now names the top as its backing file: l2 -> l1 -> l0 -> l2.
    qemu_img("rebase", "-u", "-b", "l2.qcow2", "-F", "qcow2", ch.layers[0])
    refused(tmp_path, [ch.top], IMAGE, "infinite loop")


def test_an_image_backed_by_itself(tmp_path):
    img = create(tmp_path / "self.qcow2", size=MiB)
    qemu_img("rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", img)
    refused(tmp_path, [img], IMAGE, "loop")


def test_layers_of_different_virtual_sizes(tmp_path):
    base = create(tmp_path / "small.qcow2", size=MiB)
    top = create(tmp_path / "big.qcow2", size=2 * MiB, backing=base, backing_fmt="qcow2")
    line = refused(tmp_path, [top], IMAGE, "different virtual sizes", "qemu-img resize")
    assert f"small.qcow2 {MiB}" in line and f"big.qcow2 {2 * MiB}" in line


def encrypted_qcow2(path, how: str, backing=None) -> str:
    """A qcow2 encrypted with ``how``: "luks" (what qemu makes today) or
    "aes" (the legacy format: no key derivation, so instant)."""
    args = ["qemu-img", "create", "-q", "--object", "secret,id=sec0,data=hunter2", "-f", "qcow2",
            "-o", f"encrypt.format={how},encrypt.key-secret=sec0" + (",encrypt.iter-time=10" if how == "luks" else "")]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    # For luks qemu times its key derivation (about a second of CPU) with
    # the thread's CPU clock, which now and then reads 0 ("Unable to get
    # accurate CPU usage"): try again, a bounded number of times.
    for _ in range(4):
        r = subprocess.run([*args, str(path), str(MiB)], capture_output=True, text=True)
        if r.returncode == 0:
            return str(path)
    pytest.skip(f"qemu-img cannot make a {how}-encrypted image here: {r.stderr.strip()}")


def test_an_encrypted_qcow2(tmp_path):
    img = encrypted_qcow2(tmp_path / "secret.qcow2", "luks")
    refused(tmp_path, [img], IMAGE, "secret.qcow2", "encrypted", "decrypt it first", proc=True)
    refused(tmp_path, [img], IMAGE, "encrypted", cmd="import")


def test_an_encrypted_layer_below(tmp_path):
    base = encrypted_qcow2(tmp_path / "secret.qcow2", "aes")
    mid = create(tmp_path / "mid.qcow2", backing=base, backing_fmt="qcow2")
    top = create(tmp_path / "top.qcow2", backing=mid, backing_fmt="qcow2")
    refused(tmp_path, [top], IMAGE, "secret.qcow2", "encrypted")


def test_a_qcow2_with_an_external_data_file(tmp_path):
    qemu_img("create", "-q", "-f", "raw", tmp_path / "data.raw", str(MiB))
    img = str(tmp_path / "ext.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'},data_file_raw=on", img, str(MiB))
    refused(tmp_path, [img], IMAGE, "external data file")


def test_a_layer_that_is_not_a_file(tmp_path):
    """A backing qemu opens by protocol (here json: of a null-co device):
    refused before DISK exists (it once left an empty DISK behind)."""
    top = str(tmp_path / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b",
             'json:{"driver": "raw", "file": {"driver": "null-co", "size": 1048576}}', "-F", "raw", top, str(MiB))
    refused(tmp_path, [top], IMAGE, "null-co", "is not a local image file")


def test_garbage_read_as_qcow2(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    refused(tmp_path, ["--format", "qcow2", junk], IMAGE, "not in qcow2 format")


def test_an_empty_file(tmp_path):
    (tmp_path / "empty.img").write_bytes(b"")
    refused(tmp_path, [tmp_path / "empty.img"], IMAGE, "empty")
    refused(tmp_path, [tmp_path / "empty.img"], IMAGE, "empty", cmd="import")


def test_a_directory_as_source(tmp_path):
    (tmp_path / "adir").mkdir()
    refused(tmp_path, [tmp_path / "adir"], IMAGE, "adir")
    refused(tmp_path, [tmp_path / "adir"], IMAGE, "adir", cmd="import")


def test_a_format_vdisk_does_not_take(tmp_path):
    one_error_line(run("convert", "--format", "dmg", tmp_path / "x", tmp_path / "d.vdisk"), USAGE, "dmg")


def test_a_layer_corrupt_inside_is_found_while_converting_and_the_disk_is_resumable(tmp_path):
    """qemu-img info reads only the header; a damaged table inside fails the
    read mid-way, after DISK exists: it is left resumable, and once the layer
    is repaired (its mtime as recorded) --resume finishes it."""
    ch = small_chain(tmp_path)
    victim = ch.layers[1]
    good = open(victim, "rb").read()
    (l1_offset,) = struct.unpack(">Q", good[40:48])
    with open(victim, "r+b") as f:
        f.seek(l1_offset)
        f.write(struct.pack(">Q", (1 << 63) | 0x200))       # an L2 table at an unaligned offset
    st = os.stat(victim)
    disk = str(tmp_path / "new.vdisk")
    line = one_error_line(run_proc("convert", ch.top, disk), IMAGE, "l1.qcow2",
                          f"left resumable: vdisk convert --resume {disk}")
    assert os.path.isdir(disk) and unfinished(disk) is not None
    assert line.count("l1.qcow2") >= 1
    with open(victim, "r+b") as f:
        f.write(good)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    s = ok_json("convert", "--resume", disk, "--verify")
    assert s["snapshots"] == ch.names
    check_converted(disk, ch, tmp_path)


# ------------------------------------------------------------------ DISK and --names

@pytest.mark.parametrize("what", ["directory", "file", "disk", "symlink"])
@pytest.mark.parametrize("cmd", ["convert", "import"])
def test_an_existing_disk_path_is_left_alone(tmp_path, what, cmd):
    ch = small_chain(tmp_path, n=1)
    disk = tmp_path / "taken"
    if what == "directory":
        disk.mkdir()
        (disk / "keep").write_text("mine")
    elif what == "file":
        disk.write_text("mine")
    elif what == "disk":
        ok("create", disk, "--size", "1M")
    else:
        disk.symlink_to(tmp_path / "nowhere")
    before = sorted(os.listdir(disk)) if what in ("directory", "disk") else None
    one_error_line(run(cmd, ch.top, disk), EXISTS, "already exists")
    if what == "directory":
        assert os.listdir(disk) == ["keep"]
    elif what == "file":
        assert disk.read_text() == "mine"
    elif what == "disk":
        assert sorted(os.listdir(disk)) == before and info(disk)["snapshots"] == []
    else:
        assert disk.is_symlink() and not os.path.exists(tmp_path / "nowhere")


@pytest.mark.parametrize("names, words", [
    ("a", ["gives 1 ", "makes 2 snapshots", "l0.qcow2, l1.qcow2"]),
    ("a,b,c", ["gives 3 names", "makes 2 snapshots"]),
    ("a,b/c", ["'b/c' cannot name a snapshot"]),
    ("a,", ["'' cannot name a snapshot"]),
    ("-a,b", ["'-a' cannot name a snapshot"]),
    ("x,x", ["'x' is given twice"]),
])
def test_bad_names(tmp_path, names, words):
    ch = small_chain(tmp_path)
    refused(tmp_path, [ch.top, "--names", names], USAGE, *words)


def test_names_for_a_single_image_must_be_none(tmp_path):
    ch = small_chain(tmp_path, n=1)
    refused(tmp_path, [ch.top, "--names", "x"], USAGE, "gives 1 ", "makes 0 snapshots", "none")


@pytest.mark.parametrize("label", ["-dash.qcow2", ".hidden.qcow2", "space at the end.qcow2 "])
def test_a_layer_file_name_that_cannot_name_a_snapshot_asks_for_names(tmp_path, label):
    base = create(tmp_path / label, size=MiB)
    top = create(tmp_path / "top.qcow2", backing=base, backing_fmt="qcow2")
    refused(tmp_path, [top], USAGE, f"{label!r} cannot name a snapshot", "give the names with --names")
    d = tmp_path / "named.vdisk"
    assert ok_json("convert", top, d, "--names", "base")["snapshots"] == ["base"]


def test_a_bad_name_given_with_names_does_not_suggest_names(tmp_path):
    ch = small_chain(tmp_path)
    line = refused(tmp_path, [ch.top, "--names", "a,b/c"], USAGE, "'b/c' cannot name a snapshot")
    assert "with --names" not in line
    line = refused(tmp_path, [ch.top, "--names", "a"], USAGE)
    assert "gives 1 name," in line


def test_a_layer_named_like_a_renamed_duplicate(tmp_path):
    for d in "xyz":
        (tmp_path / d).mkdir()
    a = create(tmp_path / "x" / "a.qcow2", size=MiB)
    b = create(tmp_path / "y" / "a.qcow2", backing=os.path.abspath(a), backing_fmt="qcow2")
    c = create(tmp_path / "z" / "a.qcow2-2", backing=os.path.abspath(b), backing_fmt="qcow2")
    top = create(tmp_path / "top.qcow2", backing=os.path.abspath(c), backing_fmt="qcow2")
    disk = str(tmp_path / "d.vdisk")
    r = run("convert", top, disk)
    assert r.exit_code == 0, r.stderr
    names = ok_json("snapshot", "list", disk)
    assert len({n["name"] for n in names}) == 3


def test_json_errors_are_an_error_object(tmp_path):
    r = run_proc("convert", tmp_path / "nope.qcow2", tmp_path / "d.vdisk", "--json")
    assert r.returncode == MISSING
    err = json.loads(r.stdout)["error"]
    assert set(err) == {"message", "kind", "exit_code"} and err["exit_code"] == MISSING
    assert r.stderr.startswith("vdisk: error: ") and len(r.stderr.splitlines()) == 1


# ------------------------------------------------------------------ a full file system

@contextlib.contextmanager
def small_tmpfs(path, size):
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "vdisk-test", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# Room for: almost nothing (the first metadata commit fails), part of the
# data (a checkpoint's commit fails), all but the last MiB (a data write fails).
@pytest.mark.parametrize("room", ["300K", "2M", "4400K"])
def test_a_full_file_system_leaves_the_disk_resumable(tmp_path, room):
    ch = build_chain(tmp_path, [{"name": "base.qcow2", "cmds": ["write -q -P 1 0 3M"]},
                                {"name": "mid.qcow2", "cmds": ["write -q -P 2 1M 1M"]},
                                {"name": "top.qcow2", "cmds": ["write -q -P 3 4M 1M"]}], size=6 * MiB)
    with small_tmpfs(tmp_path / "mnt", room) as mnt:
        disk = str(mnt / "d.vdisk")
        r = run_proc("convert", ch.top, disk)
        one_error_line(r, NoSpace.exit_code, "no space left", f"left resumable: vdisk convert --resume {disk}")
        assert unfinished(disk) is not None
        # Room again: the conversion finishes where it stopped.
        subprocess.run(["mount", "-o", "remount,size=64M", str(mnt)], check=True)
        r = run_proc("convert", "--resume", disk, "--verify")
        assert r.returncode == 0, r.stderr
        check_converted(disk, ch, tmp_path)
        assert info(disk)["physical_bytes"] == 5 * MiB


def test_a_failure_right_after_the_container_is_made_leaves_no_disk(tmp_path, monkeypatch):
    from vdisk.convert import converter

    def full(*a, **kw):
        raise NoSpace("no space left on the file system (simulated)")

    monkeypatch.setattr(converter.cfmt, "encode", full)
    ch = small_chain(tmp_path, n=2)
    disk = tmp_path / "new.vdisk"
    r = run("convert", ch.top, disk)
    assert r.exit_code == NoSpace.exit_code
    assert not os.path.lexists(disk) or "resum" in r.stderr


def test_a_disk_in_a_directory_that_does_not_exist(tmp_path):
    ch = small_chain(tmp_path, n=1)
    for cmd in ("convert", "import"):
        one_error_line(run(cmd, ch.top, tmp_path / "no" / "d.vdisk"), MISSING, "does not exist")
    assert not (tmp_path / "no").exists()
