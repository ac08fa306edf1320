"""``vdisk delete DISK`` of a local disk: the container goes, and nothing else
ever does - not a directory that only looks like a disk, not the target of a
symbolic link, not a disk a writer or a server holds. Without --yes it asks
on a terminal and refuses elsewhere; a delete cut short is finished by
running it again, and meanwhile the name opens no half-deleted disk."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest

from vdisk import Disk

from .test_json import DOC
from .test_terminal import on_terminal
from .util import one_error_line, run, run_proc, vdisk_cmd

BS = 4096


def _leftovers(disk: str) -> list[str]:
    parent, base = os.path.split(disk)
    return [n for n in os.listdir(parent) if n.startswith(f".{base}.")]


def _cut_short(disk: str) -> str:
    """The state a delete killed right after its rename leaves (docs/CLI.md):
    the container under a hidden name beside it, its deleter gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    hidden = os.path.join(os.path.dirname(disk), f".{os.path.basename(disk)}.deleting-{gone.pid}")
    os.rename(disk, hidden)
    return hidden


def test_delete_removes_the_container_and_says_what_it_was(disk):
    with Disk.open(disk) as d:
        d.write(0, b"x" * 8 * BS)
        d.create_snapshot("s1")
    r = run("delete", disk, "--yes")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"deleted {disk}: 16 MiB (16777216 bytes), 1 snapshot, ")
    assert not os.path.lexists(disk) and _leftovers(disk) == []
    one_error_line(run("info", disk), 3, "no disk at")
    one_error_line(run("delete", disk, "--yes"), 3, "no disk at")


def test_delete_json_has_the_documented_fields(disk):
    r = run("delete", disk, "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == DOC["delete"]
    assert out["disk"] == os.path.abspath(disk) and out["where"] == {"kind": "local", "path": os.path.abspath(disk)}
    assert out["size"] == 16 << 20 and out["snapshots"] == 0 and out["resumed"] is False
    assert out["freed_bytes"] > 0


def test_without_yes_and_no_terminal_it_refuses_and_keeps_the_disk(disk):
    one_error_line(run("delete", disk), 2, "--yes", "cannot be undone")
    assert Disk.open(disk, readonly=True).size == 16 << 20


def test_on_a_terminal_it_asks_and_only_yes_deletes(disk):
    code, tty, _ = on_terminal("delete", disk, stdin_tty=True, answer=b"n\n")
    assert code == 2 and "Delete " in tty and "This cannot be undone" in tty and "not deleted" in tty, tty
    assert os.path.isdir(disk)
    code, tty, out = on_terminal("delete", disk, stdin_tty=True, answer=b"y\n")
    assert code == 0 and out.startswith(f"deleted {disk}"), (tty, out)
    assert not os.path.lexists(disk)


def test_a_directory_that_is_not_a_disk_is_refused_and_left_alone(notdisk, tmp_path):
    one_error_line(run("delete", notdisk, "--yes"), 2, "is not a vdisk disk")
    assert sorted(os.listdir(notdisk)) == ["cat.jpg"]
    # A "data" or an empty "meta/" is not proof enough to remove a directory whole.
    for made in ("data-file", "data-dir", "empty-meta"):
        d = tmp_path / made
        d.mkdir()
        (d / "mine.txt").write_text("keep me")
        if made == "data-file":
            (d / "data").write_bytes(b"x")
        elif made == "data-dir":
            (d / "data").mkdir()
        else:
            (d / "meta").mkdir()
        before = sorted(os.listdir(d))
        one_error_line(run("delete", d, "--yes"), 8, "not deleting", "remove the directory yourself")
        assert sorted(os.listdir(d)) == before and (d / "mine.txt").read_text() == "keep me"


def test_a_missing_disk_and_a_bad_name_are_one_line_and_an_exit_code(tmp_path):
    one_error_line(run("delete", tmp_path / "nope.vdisk", "--yes"), 3, "no disk at")
    one_error_line(run("delete", "rados:pool-only", "--yes"), 2, "rados:POOL/NAME")
    one_error_line(run("delete", tmp_path / "x.vdisk", "--yes", "--break-lock"), 2, "--break-lock")
    f = tmp_path / "file"
    f.write_text("a file")
    one_error_line(run("delete", f, "--yes"), 2, "is a file")
    assert f.read_text() == "a file"


def test_a_symbolic_link_is_refused_and_both_stay(disk, tmp_path):
    link = tmp_path / "link.vdisk"
    link.symlink_to(disk)
    one_error_line(run("delete", link, "--yes"), 2, "symbolic link", disk)
    assert os.path.islink(link) and os.path.isdir(disk)


def test_a_writer_holding_the_disk_is_named_and_the_disk_stays(disk):
    child = subprocess.Popen([sys.executable, "-c", "import sys\nfrom vdisk import Disk\nd = Disk.open(sys.argv[1])\n"
                              "print('open', flush=True)\nsys.stdin.read()\n", disk],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        one_error_line(run("delete", disk, "--yes"), 5, f"in use by PID {child.pid}")
    finally:
        child.stdin.close()
        child.wait(30)
    assert os.path.isdir(disk)
    assert run("delete", disk, "--yes").exit_code == 0


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit is not installed (./dev setup installs it)")
@pytest.mark.parametrize("how, words", [((), ("served or mounted by vdisk serve", "stop it first")),
                                        (("--readonly",), ("served read-only", "stop that vdisk serve first"))],
                         ids=["writable", "readonly"])
def test_a_served_disk_is_refused_even_read_only(disk, how, words):
    server = subprocess.Popen(vdisk_cmd("serve", disk, *how, "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        event = json.loads(server.stdout.readline())
        assert event["event"] == "serving", event
        one_error_line(run_proc("delete", disk, "--yes"), 5, *words)
        assert os.path.isdir(disk)
    finally:
        server.terminate()
        server.wait(60)
    assert run("delete", disk, "--yes").exit_code == 0


def test_a_delete_cut_short_is_finished_by_running_it_again(disk):
    hidden = _cut_short(disk)
    shutil.rmtree(os.path.join(hidden, "meta"))          # cut short half-way through the removal, too
    # The name opens no half-deleted disk meanwhile, and is free for a new one.
    one_error_line(run("info", disk), 3, "no disk at")
    code, tty, _ = on_terminal("delete", disk, stdin_tty=True, answer=b"n\n")
    assert code == 2 and "Finish deleting" in tty and os.path.isdir(hidden), tty
    r = run("delete", disk, "--yes", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] is True and out["size"] is None and out["snapshots"] is None
    assert not os.path.lexists(hidden) and _leftovers(disk) == []
    one_error_line(run("delete", disk, "--yes"), 3, "no disk at")


def test_deleting_a_disk_also_finishes_an_earlier_cut_short_delete_of_its_name(disk):
    hidden = _cut_short(disk)
    assert run("create", disk, "--size", "1M").exit_code == 0
    r = run("delete", disk, "--yes")
    assert r.exit_code == 0 and "1 MiB" in r.stdout, r.stderr
    assert not os.path.lexists(disk) and not os.path.lexists(hidden) and _leftovers(disk) == []


def test_a_delete_still_running_is_not_finished_beside_it(disk):
    hidden = _cut_short(disk)
    with open(os.path.join(hidden, "lock")) as f:
        fcntl.flock(f, fcntl.LOCK_EX)                    # what the running delete holds until it is done
        one_error_line(run("delete", disk, "--yes"), 5, "being deleted by")
        assert os.path.isdir(hidden)
    assert run("delete", disk, "--yes").exit_code == 0 and not os.path.lexists(hidden)
