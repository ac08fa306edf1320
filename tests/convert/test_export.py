"""``vdisk export``: one state as a sparse raw/qcow2/vmdk image, or the
whole history as a qcow2 backing chain (``--chain``) that qemu reads back
layer for layer - nothing is locked into vdisk."""

from __future__ import annotations

import json
import os

import pytest

from .util import (KiB, MiB, assert_same, build_chain, documented_fields, image_info, ok, ok_json, one_error_line,
                   qemu_img, run, scribble)

EXPORT_FIELDS = documented_fields("export")          # docs/CLI.md is the contract
CHAIN_FIELDS = documented_fields("export-chain")
assert EXPORT_FIELDS >= {"image", "format", "snapshot", "size", "written_bytes", "verified", "seconds"}
assert CHAIN_FIELDS >= {"directory", "format", "layers", "verified", "seconds"}
# (The layer objects are described in prose: at least these.)
LAYER_FIELDS = {"file", "snapshot", "backing", "written_bytes", "zero_bytes"}


def mixed(count, align=1):
    return lambda rng, size, src: scribble(rng, size, count, src, align=align)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted 4-layer chain (zeros, discards, overwrites, sub-cluster
    writes, mixed cluster sizes), shared: exports only read it."""
    tmp_path = tmp_path_factory.mktemp("converted")
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, [
        {"name": "base.qcow2", "cmds": ["write -q -P 0x11 0 1M", "write -q -P 0x12 2M 256K"]},
        {"name": "one.qcow2", "opts": "cluster_size=4096",
         "cmds": ["write -q -z 128K 64K", "discard -q 2M 64K", "write -q -P 0x21 512K 1536"]},
        {"name": "two.qcow2", "opts": "cluster_size=512", "cmds": mixed(8)},
        {"name": "top.qcow2", "cmds": mixed(6, align=512)},
    ], seed=3)
    disk = str(tmp_path / "d.vdisk")
    ok("convert", chain.top, disk)
    return chain, disk


def test_chain_export_round_trip(converted, tmp_path):
    chain, disk = converted
    out = str(tmp_path / "exported")
    r = ok_json("export", disk, out, "--chain", "-O", "qcow2", "--verify")
    assert set(r) == CHAIN_FIELDS and r["format"] == "qcow2" and r["verified"] is True
    assert r["directory"] == os.path.abspath(out)
    assert [ly["snapshot"] for ly in r["layers"]] == chain.names + [None]
    for ly in r["layers"]:
        assert set(ly) >= LAYER_FIELDS
    files = [os.path.join(out, ly["file"]) for ly in r["layers"]]
    assert files[-1] == os.path.join(out, "disk.qcow2")
    for i, (f, orig) in enumerate(zip(files, chain.layers)):
        # The layer qemu sees, its backing chain and all, equals the original.
        assert_same(f, "qcow2", orig, "qcow2")
        qemu_img("check", "-q", f)
        facts = image_info(f, "qcow2")
        if i == 0:
            assert "backing-filename" not in facts
        else:
            # Backed by the layer below, by a relative name (the directory moves as a whole).
            assert os.path.realpath(facts["full-backing-filename"]) == os.path.realpath(files[i - 1])
            assert not os.path.isabs(facts["backing-filename"])
    # Each layer holds only what changed since its parent: the layers
    # together are not a full image each.
    written = sum(ly["written_bytes"] for ly in r["layers"])
    assert written < 3 * MiB
    # Moved elsewhere, the chain still reads the same.
    moved = str(tmp_path / "moved")
    os.rename(out, moved)
    assert_same(os.path.join(moved, "disk.qcow2"), "qcow2", chain.top, "qcow2")


def test_chain_export_of_a_disk_without_snapshots(tmp_path):
    img = str(tmp_path / "one.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(MiB))
    disk = str(tmp_path / "one.vdisk")
    ok("import", img, disk)
    r = ok_json("export", disk, tmp_path / "out", "--chain")
    assert [ly["file"] for ly in r["layers"]] == ["disk.qcow2"]
    assert r["layers"][0]["backing"] is None


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_export_of_the_running_point_in_each_format(converted, tmp_path, fmt):
    chain, disk = converted
    out = str(tmp_path / f"out.{fmt}")
    r = ok_json("export", disk, out, "-O", fmt, "--verify")
    assert set(r) == EXPORT_FIELDS
    assert r == {**r, "image": os.path.abspath(out), "format": fmt, "snapshot": None, "size": chain.size,
                 "verified": True}
    assert image_info(out)["format"] == fmt
    assert_same(out, fmt, chain.top, "qcow2")
    if fmt != "raw":
        qemu_img("check", "-q", "-f", fmt, out)
    # Nothing left beside it.
    assert os.listdir(tmp_path) == [f"out.{fmt}"]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_export_of_a_snapshot(converted, tmp_path, fmt):
    chain, disk = converted
    out = str(tmp_path / f"one.{fmt}")
    r = ok_json("export", disk, out, "--snapshot", "one.qcow2", "-O", fmt, "--verify")
    assert r["snapshot"] == "one.qcow2"
    assert_same(out, fmt, chain.layers[1], "qcow2")
    text = ok("export", disk, tmp_path / "base.raw", "-s", "base.qcow2")
    assert text.startswith("exported base.qcow2 to ")
    assert_same(tmp_path / "base.raw", "raw", chain.layers[0], "qcow2")


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk"])
def test_export_is_sparse(tmp_path, fmt):
    """A 64 MiB disk with 128 KiB of data (and a 1 MiB zero write) exports
    to an image that takes about that much space."""
    img = str(tmp_path / "src.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(64 * MiB))
    from .util import qemu_io
    qemu_io(img, "qcow2", ["write -q -P 7 10M 64K", "write -q -P 8 40M 64K", "write -q -P 0 50M 1M"])
    disk = str(tmp_path / "d.vdisk")
    ok("import", img, disk)
    out = str(tmp_path / f"out.{fmt}")
    r = ok_json("export", disk, out, "-O", fmt)
    assert r["written_bytes"] == 128 * KiB
    actual = image_info(out, fmt)["actual-size"]
    assert actual <= 2 * MiB, actual
    assert os.stat(out).st_blocks * 512 <= 2 * MiB
    assert_same(out, fmt, img, "qcow2")


def test_export_refuses_an_existing_output_and_leaves_it_alone(converted, tmp_path):
    _chain, disk = converted
    out = tmp_path / "taken.raw"
    out.write_bytes(b"mine")
    one_error_line(run("export", disk, out), 4, "already exists")
    assert out.read_bytes() == b"mine"
    (tmp_path / "dir").mkdir()
    one_error_line(run("export", disk, tmp_path / "dir", "--chain"), 4, "already exists")
    assert os.listdir(tmp_path / "dir") == []


@pytest.mark.parametrize("args, code, words", [
    (["--snapshot", "nope"], 3, ["nope"]),
    (["--chain", "--snapshot", "base.qcow2"], 2, ["--chain", "--snapshot"]),
    (["--chain", "-O", "vmdk"], 2, ["qcow2"]),
    (["--chain", "-O", "raw"], 2, ["writes qcow2", "not raw"]),
    (["-O", "vdi"], 2, ["vdi"]),
])
def test_bad_export_arguments_are_one_line_and_leave_nothing(converted, tmp_path, args, code, words):
    _chain, disk = converted
    before = sorted(os.listdir(tmp_path))
    one_error_line(run("export", disk, tmp_path / "out", *args), code, *words)
    assert sorted(os.listdir(tmp_path)) == before


def test_export_of_a_missing_disk(tmp_path):
    one_error_line(run("export", tmp_path / "nope.vdisk", tmp_path / "o.raw"), 3, "no disk at")


def test_export_json_error_object(converted, tmp_path):
    _chain, disk = converted
    r = run("export", disk, tmp_path / "o.raw", "--snapshot", "nope", "--json")
    assert r.exit_code == 3
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 3 and "nope" in err["message"]


def test_snapshot_names_qemu_would_misread_still_make_a_chain(tmp_path):
    """qemu reads "x:y.qcow2" as protocol x; the chain's backing names must
    stay file names whatever the snapshot is called."""
    chain = build_chain(tmp_path, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 128K"]},
                                   {"name": "b.qcow2", "cmds": ["write -q -P 2 64K 64K"]},
                                   {"name": "c.qcow2", "cmds": ["write -q -P 3 0 4K"]},
                                   {"name": "d.qcow2", "cmds": ["write -q -z 0 4K"]}], size=MiB)
    disk = str(tmp_path / "d.vdisk")
    ok("convert", chain.top, disk, "--names", "x:y,json:{,nbd:unix")
    ok("snapshot", "rename", disk, "nbd:unix", "a, b ü")
    out = str(tmp_path / "out")
    r = ok_json("export", disk, out, "--chain", "--verify")
    assert [ly["snapshot"] for ly in r["layers"]] == ["x:y", "json:{", "a, b ü", None]
    for ly, orig in zip(r["layers"], chain.layers):
        f = os.path.join(out, ly["file"])
        qemu_img("check", "-q", f)
        assert_same(f, "qcow2", orig, "qcow2")


def test_chain_export_of_a_tree_after_revert_delete_and_resize(tmp_path):
    """Reverts make branches: each exported layer is backed by its own parent;
    a deleted base of two branches is skipped; a grown disk tops a smaller layer."""
    import vdisk
    path = str(tmp_path / "t.vdisk")
    with vdisk.Disk.create(path, MiB, 4096) as d:
        d.write(0, b"A" * 8192)
        d.create_snapshot("root")
        d.write(8192, b"B" * 4096)
        d.create_snapshot("left")
        d.revert("root")
        d.write(4096, b"C" * 4096)
        d.create_snapshot("right")
        d.write(65536, b"D" * 4096)
        d.create_snapshot("right2")
        d.revert("right")
        d.delete_snapshot("root")           # hidden: it is the base of left and right
        d.resize(2 * MiB)
        d.write(MiB + 4096, b"E" * 4096)
        d.flush()
    out = str(tmp_path / "out")
    r = ok_json("export", path, out, "--chain", "--verify")
    backing = {ly["snapshot"]: ly["backing"] for ly in r["layers"]}
    assert backing == {"left": None, "right": None, "right2": "right.qcow2",
                       None: os.path.join("snapshots", "right.qcow2")}
    for ly in r["layers"]:
        f = os.path.join(out, ly["file"])
        raw = str(tmp_path / f"{ly['snapshot']}.raw")
        ok("export", path, raw, *(["--snapshot", ly["snapshot"]] if ly["snapshot"] else []))
        assert_same(f, "qcow2", raw, "raw")
        qemu_img("check", "-q", f)
    assert image_info(os.path.join(out, "disk.qcow2"))["virtual-size"] == 2 * MiB


def test_export_into_a_missing_directory(converted, tmp_path):
    _chain, disk = converted
    one_error_line(run("export", disk, tmp_path / "no" / "x.raw"), 3, "no such directory")
    one_error_line(run("export", disk, tmp_path / "no" / "dir", "--chain"), 3, "no such directory")
    assert os.listdir(tmp_path) == []


def test_an_unfinished_conversion_exports_its_snapshots_but_not_its_running_point(tmp_path):
    import subprocess
    import sys
    chain = build_chain(tmp_path, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 128K"]},
                                   {"name": "b.qcow2", "cmds": ["write -q -P 2 64K 64K"]},
                                   {"name": "c.qcow2", "cmds": ["write -q -P 3 0 4K"]}], size=MiB)
    disk = str(tmp_path / "half.vdisk")
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_child.py")
    r = subprocess.run([sys.executable, child, "kill-after-state", "0", "convert", chain.top, disk],
                       capture_output=True, timeout=60)
    assert r.returncode == -9
    for args in (["x.raw"], ["chain", "--chain"]):
        one_error_line(run("export", disk, tmp_path / args[0], *args[1:]), 5, "unfinished conversion",
                       f"vdisk convert --resume {disk}", "--snapshot")
        assert not os.path.lexists(tmp_path / args[0])
    ok("export", disk, tmp_path / "a.raw", "--snapshot", "a.qcow2")
    assert_same(tmp_path / "a.raw", "raw", chain.layers[0], "qcow2")


def test_export_into_a_full_file_system_leaves_nothing(converted, tmp_path):
    import subprocess
    _chain, disk = converted
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256K", "vdisk-test", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for args in (["o.raw"], ["o.qcow2", "-O", "qcow2"], ["chain", "--chain"]):
            one_error_line(run("export", disk, mnt / args[0], *args[1:]), 7, "no space left")
            assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_export_of_a_directory_that_is_not_a_disk(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    one_error_line(run("export", tmp_path / "photos", tmp_path / "o.raw"), 2, "is not a vdisk disk")
    assert os.listdir(tmp_path / "photos") == ["cat.jpg"] and not (tmp_path / "o.raw").exists()
