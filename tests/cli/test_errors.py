"""One error path: one line on stderr, the same exit code for the same cause
from every command, a table of codes that the docs cannot drift from."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess

import pytest

import vdisk.errors as errors
from vdisk.errors import EXIT_CODES, from_os_error

from .util import ROOT, one_error_line, run, run_proc, vdisk_cmd


@pytest.mark.parametrize("args, words", [
    (["create", "x.vdisk"], ["missing option '--size'", "vdisk create --help"]),
    (["info", "--bogus", "x"], ["no such option '--bogus'"]),
    (["info", "a", "b"], ["unexpected extra argument"]),
    (["create", "x.vdisk", "--size", "ten"], ["bad size 'ten'", "K, M, G, T, P or E"]),
    (["resize", "x.vdisk", "-1"], ["bad size '-1': a size cannot be negative"]),
    (["version"], ["no command 'version'", "vdisk --version"]),
    (["verfy", "x"], ["did you mean 'vdisk verify'"]),
    (["snapshot", "nope"], ["no command 'nope' in vdisk snapshot", "commands: create"]),
    (["completion", "tcsh"], ["'tcsh' is not one of"]),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, words):
    one_error_line(run(*args), 2, *words)


def test_version_is_not_offered_verify():
    line = one_error_line(run("version"), 2)
    assert "verify'?" not in line


@pytest.mark.parametrize("args", [[], ["snapshot"]])
def test_a_bare_group_prints_its_help_and_succeeds(args):
    r = run(*args)
    assert r.exit_code == 0 and r.stdout.startswith("Usage: ") and "Commands:" in r.stdout and not r.stderr


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    r = run(flag)
    assert r.exit_code == 0 and re.fullmatch(r"vdisk \d+\.\d+\.\d+\S*\n", r.stdout)


# Every command that opens a disk, given a directory that is not one.
NOT_A_DISK = [
    ["info", "D"], ["compact", "D"], ["resize", "D", "1G"], ["snapshot", "create", "D", "s"],
    ["snapshot", "list", "D"], ["snapshot", "info", "D", "s"], ["snapshot", "delete", "D", "s"],
    ["snapshot", "revert", "D", "s"], ["serve", "D"], ["mount", "D", "MP"], ["verify", "D"],
]


@pytest.mark.parametrize("args", NOT_A_DISK, ids=lambda a: " ".join(a[:2]))
def test_not_a_disk_is_exit_2_from_every_command_and_leaves_the_directory_alone(notdisk, tmp_path, args):
    mp = tmp_path / "mp"
    mp.mkdir()
    r = run_proc(*[notdisk if a == "D" else str(mp) if a == "MP" else a for a in args])
    one_error_line(r, 2, "is not a vdisk disk")
    # No leftover lock (or anything else) in the user's directory.
    assert sorted(os.listdir(notdisk)) == ["cat.jpg"]


@pytest.mark.parametrize("args", [["info", "D"], ["compact", "D"], ["snapshot", "create", "D", "s"],
                                  ["resize", "D", "1G"], ["serve", "D"], ["mount", "D", "MP"]],
                         ids=lambda a: " ".join(a[:2]))
def test_a_missing_disk_is_exit_3_from_every_command(tmp_path, args):
    (tmp_path / "mp").mkdir()
    r = run_proc(*[str(tmp_path / "nope.vdisk") if a == "D" else str(tmp_path / "mp") if a == "MP" else a
                   for a in args])
    one_error_line(r, 3, "no disk at")


def test_an_os_error_gets_the_code_of_its_kind(disk, monkeypatch):
    from vdisk import Disk

    def fail(*a, **k):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", os.path.join(disk, "data"))
    monkeypatch.setattr(Disk, "info", fail)
    one_error_line(run("info", disk), 2, f"{disk}/data: Is a directory")
    monkeypatch.setattr(Disk, "info", lambda self: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    one_error_line(run("info", disk), 10, "Input/output error")


@pytest.mark.parametrize("err, cls, code", [
    (errno.ENOENT, "NotFound", 3), (errno.EEXIST, "AlreadyExists", 4), (errno.EBUSY, "Busy", 5),
    (errno.EROFS, "ReadOnly", 6), (errno.ENOSPC, "NoSpace", 7), (errno.EDQUOT, "NoSpace", 7),
    (errno.EIO, "StorageError", 10), (errno.EACCES, "PermissionDenied", 11), (errno.EPERM, "PermissionDenied", 11),
    (errno.EISDIR, "InvalidArgument", 2), (errno.ENAMETOOLONG, "InvalidArgument", 2),
    (errno.ENOTCONN, "StorageError", 10),
])
def test_from_os_error(err, cls, code):
    e = from_os_error(OSError(err, os.strerror(err), "/x/y"))
    assert type(e).__name__ == cls and e.exit_code == code and str(e) == f"/x/y: {os.strerror(err)}"
    assert e.exit_code != 1     # 1 is verify's "problems found", never an OS error


def test_a_bug_is_one_line_exit_70_and_debug_shows_the_traceback(disk, monkeypatch):
    from vdisk import Disk
    monkeypatch.setattr(Disk, "snapshots", lambda self, exclusive=True: 1 / 0)
    line = one_error_line(run("snapshot", "list", disk), 70, "internal error: ZeroDivisionError", "--debug")
    assert "vdisk: error: " in line
    r = run("--debug", "snapshot", "list", disk)
    assert r.exit_code == 70 and "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith("vdisk: error:")


def test_json_commands_print_the_error_as_json_on_stdout_too(tmp_path, notdisk):
    # verify --json on a directory that is not a disk printed nothing on stdout.
    for args in (["info", notdisk, "--json"], ["verify", notdisk, "--json"],
                 ["create", str(tmp_path / "x"), "--size", "-1", "--json"]):
        r = run_proc(*args)
        assert r.returncode == 2
        err = json.loads(r.stdout)["error"]
        assert err["exit_code"] == 2 and err["message"] == r.stderr.strip().removeprefix("vdisk: error: ")
        assert err["kind"] in ("NotADisk", "UsageError")


def test_a_closed_stdout_is_quiet_exit_141(disk):
    for i in range(40):
        run("snapshot", "create", disk, f"snapshot-number-{i}")
    p = subprocess.Popen(vdisk_cmd("snapshot", "list", disk), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()           # like `| head -0`
    _, err = p.communicate(timeout=60)
    assert p.returncode == 141 and err == b"", err


@pytest.mark.parametrize("make, code", [(lambda p: None, 3), (lambda p: os.mkdir(p), 2)], ids=["missing", "not a disk"])
def test_verify_exits_with_the_code_every_command_gives_the_cause(tmp_path, make, code):
    path = str(tmp_path / "x.vdisk")
    make(path)
    assert run_proc("verify", path).returncode == run_proc("info", path).returncode == code


def test_ctrl_c_is_exit_130(disk, monkeypatch):
    from vdisk import Disk

    def interrupt(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Disk, "info", interrupt)
    one_error_line(run("info", disk), 130, "interrupted")


# ------------------------------------------------------------ the code table

def _doc_rows(text: str) -> list[tuple[int, str]]:
    block = text.split("<!-- exit-codes")[1].split("<!-- end exit-codes -->")[0]
    return [(int(m[1]), m[2].strip()) for m in re.finditer(r"^\| (\d+) \| (.*) \|$", block, re.M)]


@pytest.mark.parametrize("doc", ["README.md", "docs/CLI.md"])
def test_the_docs_list_exactly_the_exit_codes_of_the_code(doc):
    with open(os.path.join(ROOT, doc)) as f:
        assert _doc_rows(f.read()) == list(EXIT_CODES)


def test_the_errors_docstring_lists_exactly_the_exit_codes():
    rows = re.findall(r"^(\d+)\s{2,}(.+)$", errors.__doc__, re.M)
    assert [(int(c), m.strip()) for c, m in rows] == list(EXIT_CODES)


def test_codes_are_unique_and_every_error_class_has_one():
    codes = [c for c, _ in EXIT_CODES]
    assert len(codes) == len(set(codes))
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.VdiskError)]
    assert {c.exit_code for c in classes} <= set(codes)
    assert all(c.exit_code != errors.EXIT_PROBLEMS for c in classes)


def test_a_missing_mount_point_offers_mkdir(disk, tmp_path):
    mp = tmp_path / "not" / "yet"
    one_error_line(run_proc("mount", disk, str(mp)), 3, "does not exist", "--mkdir")
    assert not mp.exists()
