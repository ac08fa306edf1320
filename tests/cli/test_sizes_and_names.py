"""Sizes in and out of the CLI, the grow confirmation, snapshot names and
the list columns."""

from __future__ import annotations

import json
import os
import re

import pytest

from vdisk import Disk

from .util import one_error_line, run

E = 1 << 60


def _size(disk) -> int:
    return json.loads(run("info", disk, "--json").stdout)["size"]


def test_1e_is_a_size_and_info_prints_it_like_qemu_img(tmp_path):
    path = tmp_path / "huge.vdisk"
    r = run("create", path, "--size", "1E")
    assert r.exit_code == 0, r.stderr
    assert "1 EiB (1152921504606846976 bytes)" in r.stdout
    info = run("info", path).stdout
    assert "virtual size:   1 EiB (1152921504606846976 bytes)" in info and "1024P" not in info


@pytest.mark.parametrize("args, words", [
    (["create", "X", "--size", "2000P"], ["1.95 EiB (2251799813685248000 bytes)", "larger than the limit of 1 EiB"]),
    (["create", "X", "--size", "10000"], ["not a multiple of the block size 4 KiB", "use 8 KiB (8192 bytes) or"]),
    (["create", "X", "--size", "0"], ["at least one block"]),
    (["create", "X", "--size", "1G", "--block-size", "3000"], ["power of two"]),
    (["create", "X", "--size", "1Z"], ["K, M, G, T, P or E"]),
])
def test_create_refusals_give_the_real_reason(tmp_path, args, words):
    x = str(tmp_path / "x.vdisk")
    line = one_error_line(run(*[x if a == "X" else a for a in args]), 2, *words)
    assert "multiple of 4096" not in line
    assert not os.path.exists(x)


def test_resize_refusals_are_in_readable_sizes_with_the_real_reason(disk):
    # 2000P is a multiple of 4096; the limit is why.
    one_error_line(run("resize", disk, "2000P"), 2, "larger than the limit of 1 EiB (1152921504606846976 bytes)")
    one_error_line(run("resize", disk, "1M"), 2, "cannot shrink the disk from 16 MiB (16777216 bytes) to 1 MiB "
                                                 "(1048576 bytes)")
    one_error_line(run("resize", disk, "-1"), 2, "a size cannot be negative")
    assert _size(disk) == 16 << 20


def test_a_big_grow_needs_yes_when_nobody_can_be_asked(disk):
    line = one_error_line(run("resize", disk, "1024P"), 2, "--yes", "16 MiB (16777216 bytes)", "1 EiB")
    assert "cannot be shrunk back" in line
    assert _size(disk) == 16 << 20
    r = run("resize", disk, "1024P", "--yes")
    assert r.exit_code == 0, r.stderr
    assert _size(disk) == E


def test_a_grow_up_to_16x_just_happens(disk):
    r = run("resize", disk, "256M")
    assert r.exit_code == 0 and "from 16 MiB (16777216 bytes) to 256 MiB (268435456 bytes)" in r.stdout


# ------------------------------------------------------------ names

@pytest.mark.parametrize("name", ["-", "--", "-h", ".", "..", ".hidden", "a/b", "~x", "a\nb", "a\x1b[2Jb", " a",
                                  "x" * 129, "é" * 65, "x" * 10000])
def test_bad_snapshot_names_are_refused_in_one_short_line(disk, name):
    line = one_error_line(run("snapshot", "create", disk, "--", name), 2, "bad snapshot name")
    assert len(line) < 400 and "\x1b" not in line
    assert run("snapshot", "list", disk).stdout == "no snapshots\n"


@pytest.mark.parametrize("name", ["x" * 128, "é" * 64, "名前", "before upgrade", "a.b", "a-", "nightly_2026-11-01"])
def test_good_snapshot_names_work(disk, name):
    r = run("snapshot", "create", disk, name)
    assert r.exit_code == 0, r.stderr
    assert [s["name"] for s in json.loads(run("snapshot", "list", disk, "--json").stdout)] == [name]
    assert run("snapshot", "delete", disk, name).exit_code == 0


def test_every_name_command_refuses_a_bad_name_the_same_way(disk):
    # Creation applies the rule; the others look the name up, so that a
    # snapshot named under an older rule stays reachable (and deletable).
    one_error_line(run("snapshot", "create", disk, "--", ".."), 2, "bad snapshot name '..'")
    for cmd in ("info", "delete", "revert", "rollback"):
        one_error_line(run("snapshot", cmd, disk, "--", ".."), 3, "no snapshot named '..'")


def test_list_columns_fit_long_names(disk):
    for name in ("a", "n" * 64, "x" * 100):
        run("snapshot", "create", disk, name)
    lines = run("snapshot", "list", disk).stdout.splitlines()
    starts = {m.start() for m in (re.search(r"\d{4}-\d\d-\d\d ", ln) for ln in lines[1:])}
    assert len(starts) == 1 and lines[0].index("CREATED") == starts.pop()
    assert lines[1].split()[-1] == "-"           # the first has no parent
    assert lines[3].endswith("  " + "n" * 64)


def test_snapshot_info_shows_parent_children_and_space(disk):
    with Disk.open(disk) as d:
        d.write(0, b"x" * 8192)
        d.create_snapshot("a")
        d.write(0, b"y" * 8192)
        d.create_snapshot("b")
    r = run("snapshot", "info", disk, "a")
    assert r.exit_code == 0, r.stderr
    assert "exclusive: 8 KiB (8192 bytes)" in r.stdout and "children:  b" in r.stdout and "parent:    -" in r.stdout
    info = json.loads(run("snapshot", "info", disk, "b", "--json").stdout)
    assert info["parent"] == "a" and info["children"] == [] and info["exclusive_bytes"] == 0   # shared with the disk
    one_error_line(run("snapshot", "info", disk, "c"), 3, "no snapshot named 'c'")


def test_rollback_is_revert(disk):
    with Disk.open(disk) as d:
        d.write(0, b"1" * 4096)
        d.create_snapshot("one")
        d.write(0, b"2" * 4096)
    r = run("snapshot", "rollback", disk, "one")
    assert r.exit_code == 0 and "reverted" in r.stdout
    with Disk.open(disk, readonly=True) as d:
        assert d.read(0, 4096) == b"1" * 4096
