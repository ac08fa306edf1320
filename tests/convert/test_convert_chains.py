"""``vdisk convert`` of qemu-made chains: every layer becomes a snapshot
that exports byte for byte equal to the layer (``qemu-img compare``), the
running point equals the top, ``vdisk verify`` is clean, and the space the
disk uses follows the data the layers hold themselves - never a full image
per layer."""

from __future__ import annotations

import json
import os

import pytest

from .util import (BS, KiB, MiB, build_chain, documented_fields, check_converted, create, info, ok, ok_json, own_data_blocks,
                   own_nonzero_blocks, qemu_img, qemu_io, run_proc, scribble)

# The summary's fields are the ones docs/CLI.md documents; the tests below
# read the ones every version has.
SUMMARY_FIELDS = documented_fields("convert")
assert SUMMARY_FIELDS >= {"disk", "layers", "snapshots", "read_bytes", "written_bytes", "zero_bytes",
                          "unchanged_bytes", "seconds", "verified_bytes"}


def mixed(count, align=1, **kw):
    return lambda rng, size, src: scribble(rng, size, count, src, align=align, **kw)


def convert(chain, tmp_path, *extra):
    disk = str(tmp_path / "out.vdisk")
    s = ok_json("convert", chain.top, disk, "--verify", *extra)
    assert set(s) == SUMMARY_FIELDS
    assert s["disk"] == os.path.abspath(disk)
    assert s["layers"] == len(chain.layers)
    assert s["snapshots"] == chain.names
    assert s["verified_bytes"] is not None and s["verified_bytes"] > 0
    return disk, s


def check_space(disk, chain, tmp_path, tight=True):
    """physical bytes within [the layers' own non-zero blocks, the blocks
    their own data extents touch]: cost follows the layers' own data."""
    most = sum(len(own_data_blocks(p, f)) for p, f in zip(chain.layers, chain.formats)) * BS
    facts = info(disk)
    assert facts["physical_bytes"] <= most, (facts, most)
    if tight:
        least = sum(own_nonzero_blocks(p, tmp_path) for p, f in zip(chain.layers, chain.formats)
                    if f == "qcow2") * BS
        assert least <= facts["physical_bytes"], (facts, least)
    # Not a full image per layer: far less than one even, for these sparse chains.
    assert facts["physical_bytes"] < len(chain.layers) * chain.size // 2
    return facts


# Each case: the specs of a chain (base first), written with seeded qemu-io patterns.
CASES = {
    "zero writes, discards, overwrites": [
        {"name": "base.qcow2", "cmds": ["write -q -P 0x11 0 1M", "write -q -P 0x12 2M 512K"]},
        {"name": "mid.qcow2", "cmds": ["write -q -z 256K 128K",       # zeros over base data
                                       "discard -q 512K 64K",         # a discard in an overlay
                                       "write -q -P 0x21 768K 512K",  # overwrites base, and past it
                                       "write -q -z 3M 64K",          # zeros over nothing
                                       "write -q -c 1536K 64K"]},     # a compressed cluster
        {"name": "top.qcow2", "cmds": ["write -q -P 0x31 0 4K", "discard -q 2M 256K",
                                       "write -q -z -u 1M 64K"]},
    ],
    "sub-cluster and unaligned writes": [
        {"name": "base.qcow2", "cmds": ["write -q -P 0x41 0 2M"]},
        {"name": "mid.qcow2", "cmds": ["write -q -P 0x42 512 512", "write -q -P 0x43 4097 1536",
                                       "write -q -P 0x44 65535 3", "write -q -z 70001 1536",
                                       "write -q -P 0x45 3M 512"]},
        {"name": "top.qcow2", "cmds": mixed(12)},
    ],
    "cluster sizes 512, 4K, 64K, 2M": [
        {"name": "c512.qcow2", "opts": "cluster_size=512", "cmds": mixed(10)},
        {"name": "c4k.qcow2", "opts": "cluster_size=4096", "cmds": mixed(10)},
        {"name": "c64k.qcow2", "opts": "cluster_size=65536", "cmds": mixed(10)},
        {"name": "c2m.qcow2", "opts": "cluster_size=2097152", "cmds": mixed(4, max_len=64 * KiB)},
        {"name": "top.qcow2", "opts": "cluster_size=512", "cmds": mixed(10)},
    ],
    "qcow2 variants: subclusters (extended L2), compat 0.10": [
        {"name": "v2.qcow2", "opts": "compat=0.10", "cmds": mixed(8)},               # no zero clusters
        {"name": "sub.qcow2", "opts": "extended_l2=on,cluster_size=65536", "cmds": mixed(10)},  # 2 KiB subclusters
        {"name": "sub2.qcow2", "opts": "extended_l2=on,cluster_size=2097152", "cmds": mixed(6)},  # 64 KiB
        {"name": "top.qcow2", "opts": "compat=0.10", "cmds": ["write -q -z 0 64K", "discard -q 1M 64K"]},
    ],
    "random, cluster aligned": [
        {"name": f"r{i}.qcow2", "cmds": mixed(8, align=64 * KiB)} for i in range(4)
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_layer_becomes_a_snapshot_equal_to_it(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, CASES[case], seed=sorted(CASES).index(case))
    disk, s = convert(chain, tmp_path)
    check_converted(disk, chain, tmp_path / "src")
    # Sub-block layers (512 B clusters) may cost a whole block per write, so
    # only the upper bound holds for them; the rest are tight.
    check_space(disk, chain, tmp_path, tight=not any(w in case for w in ("512", "unaligned", "subclusters")))
    assert s["read_bytes"] >= s["written_bytes"]


def test_a_20_layer_chain(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    specs = [{"name": f"l{i:02}.qcow2", "cmds": mixed(3, align=4 * KiB, max_len=128 * KiB)} for i in range(20)]
    chain = build_chain(src, specs, size=2 * MiB, seed=20)
    # (No --verify here: check_converted compares every state through qemu
    # anyway, and 20 layers make each extra pass cost.)
    disk = str(tmp_path / "out.vdisk")
    s = ok_json("convert", chain.top, disk)
    assert s["layers"] == 20 and s["snapshots"] == chain.names and len(s["snapshots"]) == 19
    check_converted(disk, chain, src)
    check_space(disk, chain, tmp_path, tight=False)
    # A straight line of snapshots, each the parent of the next.
    snaps = ok_json("snapshot", "list", disk)
    assert [x["parent"] for x in snaps] == [None] + chain.names[:-1]


def test_a_vmdk_chain(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    specs = [{"name": "b.vmdk", "fmt": "vmdk", "cmds": ["write -q -P 0x51 0 1M", "write -q -P 0x52 3M 64K"]},
             {"name": "m.vmdk", "fmt": "vmdk", "cmds": mixed(8, align=512, kinds=("data", "pattern", "zero"))},
             {"name": "t.vmdk", "fmt": "vmdk", "opts": "zeroed_grain=on",      # zero grains: zeros as metadata
              "cmds": ["write -q -P 0x53 512K 1536", "write -q -z 3M 64K", "write -q -z 0 64K"]}]
    chain = build_chain(src, specs, seed=5)
    assert json.loads(qemu_img("info", "--output=json", chain.top))["backing-filename-format"] == "vmdk"
    disk, _s = convert(chain, tmp_path)
    check_converted(disk, chain, src)
    check_space(disk, chain, tmp_path, tight=False)


def test_a_vmdk_chain_over_a_stream_optimized_base(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    specs = [{"name": "so.vmdk", "fmt": "vmdk", "opts": "subformat=streamOptimized",
              "cmds": ["write -q -P 0x54 0 1M"]},
             {"name": "t.vmdk", "fmt": "vmdk", "cmds": ["write -q -P 0x55 512K 64K", "write -q -z 0 64K"]}]
    chain = build_chain(src, specs, seed=6)
    disk, _s = convert(chain, tmp_path)
    check_converted(disk, chain, src)


def test_relative_paths_from_another_directory(tmp_path, monkeypatch):
    """Layers are recorded by absolute path, so where convert and --resume
    run from does not matter."""
    src = tmp_path / "images"
    src.mkdir()
    chain = build_chain(src, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 128K"]},
                              {"name": "b.qcow2", "cmds": ["write -q -P 2 64K 64K"]}], size=MiB)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    s = ok_json("convert", "../images/b.qcow2", "out.vdisk", "--verify")
    assert s["disk"] == str(tmp_path / "work" / "out.vdisk") and s["snapshots"] == ["a.qcow2"]
    monkeypatch.chdir(tmp_path)
    check_converted("work/out.vdisk", chain, src)


def test_quiet_on_stderr_when_it_is_not_a_terminal(tmp_path):
    """Progress bars only on a terminal: a script sees the summary on stdout and nothing on stderr."""
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 1M"]},
                              {"name": "b.qcow2", "cmds": ["write -q -P 2 0 64K"]}])
    for args in (["convert", chain.top, tmp_path / "c.vdisk", "--verify"],
                 ["import", chain.top, tmp_path / "i.vdisk", "--verify"],
                 ["export", tmp_path / "c.vdisk", tmp_path / "e", "--chain", "--verify"]):
        r = run_proc(*args)
        assert r.returncode == 0 and r.stderr == "" and r.stdout.count("\n") == 1, (args, r)


def test_a_raw_base_under_qcow2_layers(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = str(src / "base.raw")
    qemu_img("create", "-q", "-f", "raw", base, str(4 * MiB))      # sparse: holes cost nothing
    qemu_io(base, "raw", ["write -q -P 0x61 1M 1M", "write -q -P 0 3M 64K"])   # zeros written as data
    mid = create(src / "mid.qcow2", "qcow2", None, base, "raw")
    qemu_io(mid, "qcow2", ["write -q -P 0x62 1536K 1M", "write -q -z 1M 4K"])
    top = create(src / "top.qcow2", "qcow2", None, mid, "qcow2")
    qemu_io(top, "qcow2", ["write -q -P 0x63 0 8K"])
    from .util import Chain
    chain = Chain([base, mid, top], ["raw", "qcow2", "qcow2"], 4 * MiB)
    disk, s = convert(chain, tmp_path)
    check_converted(disk, chain, src)
    check_space(disk, chain, tmp_path)
    # Exactly the non-zero data: the base's 1 MiB (not its holes, nor the
    # zeros written into the file), mid's 1 MiB plus the 60 KiB of base data
    # qemu copied into the cluster its 4 KiB zero write allocated, top's 8 KiB
    # (its cluster's copy of the base's hole is zeros).
    assert info(disk)["physical_bytes"] == 2 * MiB + 60 * KiB + 8 * KiB
    assert s["zero_bytes"] >= 64 * KiB


def test_a_block_device_as_the_raw_base(tmp_path):
    """An LVM-style base: a raw block device (a loop device here) under a qcow2 overlay."""
    import subprocess
    img = str(tmp_path / "dev.raw")
    qemu_img("create", "-q", "-f", "raw", img, str(2 * MiB))
    qemu_io(img, "raw", ["write -q -P 0x65 0 1M"])
    r = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        top = create(tmp_path / "top.qcow2", backing=dev, backing_fmt="raw")
        qemu_io(top, "qcow2", ["write -q -P 0x66 512K 64K"])
        from .util import Chain
        chain = Chain([dev, top], ["raw", "qcow2"], 2 * MiB)
        disk, s = convert(chain, tmp_path)
        assert s["snapshots"] == [os.path.basename(dev)]
        check_converted(disk, chain, tmp_path)
        assert info(disk)["physical_bytes"] == MiB + 64 * KiB     # the device's zeros take nothing
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_a_raw_image_alone_and_a_size_that_is_not_whole_blocks(tmp_path):
    src = tmp_path / "odd.raw"
    qemu_img("create", "-q", "-f", "raw", src, str(3 * MiB + 1536))
    qemu_io(str(src), "raw", ["write -q -P 0x71 0 1000", "write -q -P 0x72 3145728 1536"])
    disk = str(tmp_path / "odd.vdisk")
    s = ok_json("convert", src, disk, "--verify")
    assert s["layers"] == 1 and s["snapshots"] == []
    assert info(disk)["size"] == 3 * MiB + 1536
    out = str(tmp_path / "back.raw")
    ok("export", disk, out)
    from .util import assert_same
    assert_same(out, "raw", src, "raw")


def test_names_replace_the_file_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 64K"]},
                              {"name": "b.qcow2", "cmds": ["write -q -P 2 64K 64K"]},
                              {"name": "c.qcow2", "cmds": ["write -q -P 3 0 4K"]}])
    disk = str(tmp_path / "n.vdisk")
    s = ok_json("convert", chain.top, disk, "--names", "monday, tuesday")
    assert s["snapshots"] == ["monday", "tuesday"]
    assert [x["name"] for x in ok_json("snapshot", "list", disk)] == ["monday", "tuesday"]


def test_two_layers_with_one_file_name_get_distinct_snapshot_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = create(tmp_path / "a" / "disk.qcow2", size=MiB)
    qemu_io(base, "qcow2", ["write -q -P 1 0 64K"])
    mid = create(tmp_path / "b" / "disk.qcow2", backing=os.path.abspath(base), backing_fmt="qcow2")
    qemu_io(mid, "qcow2", ["write -q -P 2 0 4K"])
    top = create(tmp_path / "top.qcow2", backing=os.path.abspath(mid), backing_fmt="qcow2")
    disk = str(tmp_path / "d.vdisk")
    s = ok_json("convert", top, disk, "--verify")
    assert s["snapshots"] == ["disk.qcow2", "disk.qcow2-2"]


def test_the_text_summary_names_layers_and_snapshots(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    chain = build_chain(src, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 64K"]},
                              {"name": "b.qcow2", "cmds": ["write -q -z 0 64K"]}])
    out = ok("convert", chain.top, tmp_path / "t.vdisk", "--verify")
    assert out.startswith("converted 2 layers into ") and "(1 snapshot)" in out and "verified" in out
