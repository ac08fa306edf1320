"""A qcow2 layer's internal snapshots (``qemu-img snapshot -c``) come along:
each becomes a vdisk snapshot, in the order qemu took them, before the
layer's current state - in the base and in a middle layer."""

from __future__ import annotations

from .util import (BS, MiB, build_chain, check_converted, info, ok_json, one_error_line, own_data_blocks, qemu_img,
                   qemu_io, run, scribble)


def mixed(count, align=1):
    return lambda rng, size, src: scribble(rng, size, count, src, align=align)


def test_internal_snapshots_in_the_base_and_a_middle_layer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, [
        {"name": "base.qcow2",
         "snapshots": {"first": ["write -q -P 0x11 0 1M"],
                       "second": ["write -q -P 0x12 512K 1M", "write -q -z 0 64K"]},
         "cmds": ["write -q -P 0x13 3M 256K", "discard -q 512K 128K"]},
        {"name": "mid.qcow2",
         "snapshots": {"before": mixed(6)},
         "cmds": mixed(6)},
        {"name": "top.qcow2", "cmds": mixed(4, align=4096)},
    ], seed=7)
    assert chain.internal == {0: ["first", "second"], 1: ["before"]}
    disk = str(tmp_path / "out.vdisk")
    s = ok_json("convert", chain.top, disk, "--verify")
    assert s["snapshots"] == ["base.qcow2@first", "base.qcow2@second", "base.qcow2",
                              "mid.qcow2@before", "mid.qcow2"]
    assert s["verified_bytes"] > 0
    check_converted(disk, chain, src)
    # Internal states share most of their data: only what differs is written
    # again, so the whole disk stays within one copy of each state's own data.
    own = sum(len(own_data_blocks(p, "qcow2")) for p in chain.layers) * BS
    assert info(disk)["physical_bytes"] <= 2 * own
    assert s["unchanged_bytes"] > 0


def test_a_lone_image_with_internal_snapshots(tmp_path):
    chain = build_chain(tmp_path, [{"name": "vm.qcow2",
                                    "snapshots": {"a": ["write -q -P 1 0 64K"], "b": ["write -q -P 2 64K 64K"]},
                                    "cmds": ["write -q -P 3 0 4K"]}], size=MiB)
    disk = str(tmp_path / "vm.vdisk")
    s = ok_json("convert", chain.top, disk)
    assert s["snapshots"] == ["vm.qcow2@a", "vm.qcow2@b"]
    check_converted(disk, chain, tmp_path)


def test_import_ignores_internal_snapshots(tmp_path):
    chain = build_chain(tmp_path, [{"name": "vm.qcow2", "snapshots": {"a": ["write -q -P 1 0 64K"]},
                                    "cmds": ["write -q -P 3 0 4K"]}], size=MiB)
    disk = str(tmp_path / "vm.vdisk")
    s = ok_json("import", chain.top, disk, "--verify")
    assert s["snapshots"] == [] and s["layers"] == 1
    assert ok_json("snapshot", "list", disk) == []


def test_offsets_past_4_gib_and_block_status_past_1_gib(tmp_path):
    """An 8 GiB sparse chain: qemu-nbd's block status is asked 1 GiB at a
    time, and offsets need 64 bits; an internal snapshot makes the
    converter use it."""
    GiB = 1 << 30
    chain = build_chain(tmp_path, [
        {"name": "b.qcow2",
         "snapshots": {"s": ["write -q -P 1 0 64K", f"write -q -P 2 {3 * GiB} 64K", f"write -q -P 3 {5 * GiB} 4K"]},
         "cmds": [f"write -q -P 4 {5 * GiB} 64K", f"write -q -z {3 * GiB} 64K", f"write -q -P 5 {7 * GiB} 4K",
                  f"write -q -P 6 {GiB - 2048} 4K"]},
        {"name": "t.qcow2", "cmds": [f"write -q -P 7 {6 * GiB} 1M", "write -q -z 0 4K",
                                     f"write -q -P 8 {8 * GiB - 512} 512"]},
    ], size=8 * GiB)
    disk = str(tmp_path / "big.vdisk")
    s = ok_json("convert", chain.top, disk, "--verify")
    assert s["snapshots"] == ["b.qcow2@s", "b.qcow2"]
    check_converted(disk, chain, tmp_path)
    assert info(disk)["physical_bytes"] < 2 * MiB
    r = ok_json("export", disk, tmp_path / "out", "--chain", "--verify")
    assert len(r["layers"]) == 3


def test_an_internal_snapshot_name_with_a_comma(tmp_path):
    """qemu's option strings split at commas: the name must be escaped ("x,,y")."""
    chain = build_chain(tmp_path, [{"name": "vm.qcow2",
                                    "snapshots": {"x,y": ["write -q -P 1 0 64K"], "a=b c": ["write -q -P 2 0 4K"]},
                                    "cmds": ["write -q -P 3 0 4K"]}], size=MiB)
    disk = str(tmp_path / "vm.vdisk")
    s = ok_json("convert", chain.top, disk, "--verify")
    assert s["snapshots"] == ["vm.qcow2@x,y", "vm.qcow2@a=b c"]
    check_converted(disk, chain, tmp_path)


def test_two_internal_snapshots_with_one_name_are_refused_before_the_disk_exists(tmp_path):
    """qemu loads a snapshot by name, finding the first: the second would
    silently convert (and verify) as the first."""
    img = str(tmp_path / "vm.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, str(MiB))
    for pattern in (1, 2):
        qemu_io(img, "qcow2", [f"write -q -P {pattern} 0 64K"])
        qemu_img("snapshot", "-c", "same", img)
    disk = tmp_path / "vm.vdisk"
    one_error_line(run("convert", img, disk), 12, "internal snapshots 1 and 2 are both called 'same'",
                   "qemu-img snapshot -d")
    assert not disk.exists()
