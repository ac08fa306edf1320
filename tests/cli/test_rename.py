"""``vdisk snapshot rename DISK NAME NEW`` on a disk at rest: what it prints,
its JSON, its refusals (one line, the exit code of the cause), and that
the rest of the CLI sees the new name. Through a server and a mount:
tests/nbd/test_rename.py and tests/fuse/test_fuse_rename.py."""

from __future__ import annotations

import json
import os

import pytest

from vdisk import Disk
from vdisk import disk as engine

from .test_completion import _complete
from .test_json import DOC
from .util import one_error_line, run


def _names(disk):
    r = run("snapshot", "list", disk, "--json")
    assert r.exit_code == 0, r.stderr
    return [(s["name"], s["parent"]) for s in json.loads(r.stdout)]


def test_rename_prints_one_line_and_the_disk_shows_the_new_name(disk):
    with Disk.open(disk) as d:
        d.write(0, b"a" * 4096)
        d.create_snapshot("before-upgrade")
        d.write(0, b"b" * 4096)
        d.create_snapshot("after")
    r = run("snapshot", "rename", disk, "before-upgrade", "release-1.0")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "renamed snapshot before-upgrade to release-1.0\n", "")
    assert _names(disk) == [("release-1.0", None), ("after", "release-1.0")]
    r = run("snapshot", "info", disk, "release-1.0", "--json")
    assert json.loads(r.stdout)["children"] == ["after"]
    r = run("snapshot", "info", disk, "before-upgrade")
    one_error_line(r, 3, "no snapshot named 'before-upgrade'")
    r = run("snapshot", "revert", disk, "release-1.0")
    assert r.exit_code == 0, r.stderr
    with Disk.open(disk, readonly=True) as d:
        assert d.read(0, 1) == b"a"


def test_rename_json_is_the_snapshot_and_its_old_name(disk):
    run("snapshot", "create", disk, "s1")
    created = json.loads(run("snapshot", "create", disk, "s2", "--json").stdout)
    r = run("snapshot", "rename", disk, "s2", "two", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == DOC["snapshot"] | DOC["snapshot-rename"]
    assert out == {**created, "name": "two", "old_name": "s2"}


@pytest.mark.parametrize("old, new, code, words", [
    ("nope", "x", 3, "no snapshot named 'nope'"),
    ("s1", "s2", 4, "snapshot 's2' already exists"),
    ("s1", "s1", 4, "already exists"),
    ("s1", "..", 2, "bad snapshot name '..'"),
    ("s1", "a/b", 2, "bad snapshot name 'a/b'"),
    ("s1", "~hidden", 2, "bad snapshot name '~hidden'"),
    ("~s1.1", "x", 3, "no snapshot named"),
])
def test_refusals_are_one_line_with_the_code_of_the_cause(disk, old, new, code, words):
    for name in ("s1", "s2"):
        run("snapshot", "create", disk, name)
    one_error_line(run("snapshot", "rename", disk, "--", old, new), code, words)
    assert _names(disk) == [("s1", None), ("s2", "s1")]


def test_json_refusal_is_the_error_object(disk):
    r = run("snapshot", "rename", disk, "nope", "x", "--json")
    assert r.exit_code == 3
    assert set(json.loads(r.stdout)) == DOC["error"]


def test_an_old_rule_name_can_be_renamed_to_a_good_one(disk, monkeypatch):
    with Disk.open(disk) as d:
        monkeypatch.setattr(engine, "validate_snapshot_name", lambda name: None)
        d.create_snapshot("-")
        monkeypatch.undo()
    r = run("snapshot", "rename", disk, "--", "-", "dash")
    assert r.exit_code == 0, r.stderr
    assert _names(disk) == [("dash", None)]


def test_a_missing_disk_is_exit_3(tmp_path):
    one_error_line(run("snapshot", "rename", tmp_path / "no.vdisk", "a", "b"), 3, "no disk at")


def test_not_a_disk_is_exit_2_and_leaves_the_directory_alone(notdisk):
    one_error_line(run("snapshot", "rename", notdisk, "a", "b"), 2, "is not a vdisk disk")
    assert os.listdir(notdisk) == ["cat.jpg"]


def test_the_old_name_completes(disk):
    for name in ("before-upgrade", "nightly"):
        run("snapshot", "create", disk, name)
    assert _complete("snapshot", "rename", disk, "bef") == ["before-upgrade"]
