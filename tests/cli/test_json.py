"""--json on every command that reports or changes something, with exactly
the fields docs/CLI.md documents."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import click
import pytest

from vdisk import Disk
from vdisk.cli.main import main

from .util import ROOT, run, run_proc, subcommands, vdisk_cmd

BS = 4096
# Commands that neither report on a disk nor change one.
NO_JSON = {"completion"}


def commands(group=main, prefix=()):
    for name, cmd in subcommands(group):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def documented() -> dict[str, set[str]]:
    with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
        text = f.read()
    blocks = re.findall(r"```json-fields (\S+)\n(.*?)```", text, re.S)
    return {name: {line.split()[0] for line in body.splitlines() if line.strip()} for name, body in blocks}


DOC = documented()


@pytest.mark.parametrize("path, cmd", list(commands()), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_that_reports_or_changes_has_json(path, cmd):
    if path[-1] in NO_JSON:
        return
    assert any(p.name == "as_json" and "--json" in p.opts for p in cmd.params), f"vdisk {' '.join(path)} has no --json"


def _json(*args):
    r = run(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_disk_and_snapshot_commands_print_the_documented_fields(tmp_path):
    path = str(tmp_path / "j.vdisk")
    assert set(_json("create", path, "--size", "16M")) == DOC["info"]
    with Disk.open(path) as d:
        d.write(0, b"a" * 8 * BS)
    snap = _json("snapshot", "create", path, "s1")
    assert set(snap) == DOC["snapshot"] and snap["name"] == "s1" and snap["exclusive_bytes"] is None
    listed = _json("snapshot", "list", path)
    assert [set(s) for s in listed] == [DOC["snapshot"]]
    info = _json("info", path)
    assert set(info) == DOC["info"] and [set(s) for s in info["snapshots"]] == [DOC["snapshot"]]
    assert set(_json("snapshot", "info", path, "s1")) == DOC["snapshot"] | DOC["snapshot-info"]
    for cmd in ("revert", "rollback"):
        out = _json("snapshot", cmd, path, "s1")
        assert set(out) == DOC["snapshot-revert"] and out == {"name": "s1", "size": 16 << 20}
    out = _json("resize", path, "32M")
    assert set(out) == DOC["resize"] and (out["old_size"], out["size"]) == (16 << 20, 32 << 20)
    out = _json("compact", path)
    assert set(out) == DOC["compact"] and isinstance(out["returned_bytes"], int)
    out = _json("snapshot", "delete", path, "s1")
    assert set(out) == DOC["snapshot-delete"]


def test_snapshot_delete_reports_what_it_held_and_what_was_freed(disk):
    with Disk.open(disk) as d:
        d.write(0, b"a" * 32 * BS)
        d.create_snapshot("old")
        d.write(0, b"b" * 32 * BS)          # "old" now holds 32 blocks alone
    out = _json("snapshot", "delete", disk, "old")
    assert out == {"name": "old", "exclusive_bytes": 32 * BS, "freed_bytes": 32 * BS, "deferred": False,
                   "still_held_bytes": 0}


def test_a_deferred_base_says_what_it_still_holds(disk):
    with Disk.open(disk) as d:
        d.write(0, b"x" * 16 * BS)
        d.create_snapshot("base")
        d.write(0, b"y" * 16 * BS)
        d.create_snapshot("child")
        d.revert("base")
        d.write(0, b"z" * 16 * BS)          # base alone holds x now; child and the disk depend on it
    r = run("snapshot", "delete", disk, "base")
    assert r.exit_code == 0, r.stderr
    assert "the 64 KiB (65536 bytes) it holds alone return when at most one of them is left" in r.stdout
    run("snapshot", "create", disk, "again")
    out = _json("snapshot", "delete", disk, "again")
    assert out["deferred"] is False
    # With the child gone, the hidden base has one dependent left and goes too.
    with Disk.open(disk) as d:
        before = d.info()["physical_bytes"]
    out = _json("snapshot", "delete", disk, "child")
    assert out["freed_bytes"] >= 16 * BS
    with Disk.open(disk) as d:
        assert d.info()["physical_bytes"] <= before - 32 * BS


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit (./dev setup installs it)")
def test_serve_json_is_one_event_per_line(disk, tmp_path):
    run("snapshot", "create", disk, "s1")
    p = subprocess.Popen(vdisk_cmd("serve", disk, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(p.stdout.readline())
        assert set(first) == DOC["serve"] and first["event"] == "serving"
        assert [e["name"] for e in first["exports"]] == ["", "s1"]
        assert all(set(e) == {"name", "snapshot", "readonly", "uri"} for e in first["exports"])
        # While served, the commands go through the server and keep their schema.
        out = json.loads(run_proc("snapshot", "delete", disk, "s1", "--json").stdout)
        assert set(out) == DOC["snapshot-delete"] and out["freed_bytes"] == 0   # s1 held nothing alone
    finally:
        p.send_signal(signal.SIGTERM)
        rest, err = p.communicate(timeout=60)
    last = json.loads(rest.strip().splitlines()[-1])
    assert set(last) == DOC["serve-stopped"] and last["event"] == "stopped", err


def _fuse_usable():
    return shutil.which("fusermount3") and os.access("/dev/fuse", os.R_OK | os.W_OK)


@pytest.mark.skipif(not _fuse_usable(), reason="needs FUSE (fusermount3, /dev/fuse)")
def test_mount_and_umount_json(disk, tmp_path):
    mp = str(tmp_path / "mnt")
    r = run_proc("mount", disk, mp, "--mkdir", "--json")
    assert r.returncode == 0, r.stderr
    try:
        out = json.loads(r.stdout)
        assert set(out) == DOC["mount"] and out["image"] == os.path.join(mp, "disk.img")
        assert os.path.getsize(out["image"]) == 16 << 20
    finally:
        u = run_proc("umount", mp, "--json")
    assert u.returncode == 0, u.stderr
    out = json.loads(u.stdout)
    assert set(out) == DOC["umount"] and out["stale"] is False and out["mountpoint"] == mp


def test_the_error_object_is_documented(tmp_path):
    r = run("info", str(tmp_path / "nope"), "--json")
    assert r.exit_code == 3 and set(json.loads(r.stdout)) == DOC["error"]
    assert set(json.loads(r.stdout)["error"]) == {"message", "kind", "exit_code"}


@pytest.mark.skipif(not _fuse_usable(), reason="needs FUSE (fusermount3, /dev/fuse)")
def test_the_mount_banner_says_how_to_copy_an_image_in(disk, tmp_path):
    # cp opens disk.img with O_TRUNC, which a fixed-size image refuses (EPERM).
    mp = str(tmp_path / "a" / "mnt")
    r = run_proc("mount", disk, mp, "--mkdir")
    try:
        assert r.returncode == 0, r.stderr
        assert "dd conv=notrunc, not cp" in r.stdout
    finally:
        assert run_proc("umount", mp).returncode == 0


def test_convert_import_and_export_print_the_documented_fields(tmp_path):
    import subprocess
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 64k", base], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top], check=True)
    conv = _json("convert", top, str(tmp_path / "c.vdisk"), "--verify")
    assert set(conv) == DOC["convert"] and conv["snapshots"] == ["base.qcow2"] and conv["verified_bytes"]
    imp = _json("import", top, str(tmp_path / "i.vdisk"))
    assert set(imp) == DOC["convert"] and imp["snapshots"] == [] and imp["verified_bytes"] is None
    again = _json("convert", "--resume", str(tmp_path / "c.vdisk"))
    assert set(again) == DOC["convert"] and again["layers"] == 0
    out = _json("export", str(tmp_path / "c.vdisk"), str(tmp_path / "x.qcow2"), "-O", "qcow2")
    assert set(out) == DOC["export"] and out["written_bytes"] == 64 << 10
    chain = _json("export", str(tmp_path / "c.vdisk"), str(tmp_path / "chain"), "--chain")
    assert set(chain) == DOC["export-chain"]
    assert [ly["file"] for ly in chain["layers"]] == ["snapshots/base.qcow2.qcow2", "disk.qcow2"]


def test_convert_online_prints_the_documented_fields(tmp_path):
    import subprocess
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "4M"], check=True)
    out = _json("convert", "--online", base, str(tmp_path / "o.vdisk"))
    assert set(out) == DOC["convert-online"] and out["online"] is True and out["snapshots"] == []
    info = _json("info", str(tmp_path / "o.vdisk"))
    assert set(info) == DOC["info"] and info["conversion"]["online"] and not info["conversion"]["complete"]
