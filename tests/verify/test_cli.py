"""``vdisk verify``: exit codes, one line per problem, the JSON report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from click.testing import CliRunner

from vdisk import logformat as lf
from vdisk.cli.main import main

from .util import lba_extents


def _run(*args):
    return CliRunner().invoke(main, ["verify", *args])


def test_clean_disk_exits_0_with_a_summary(template):
    r = _run(template)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(os.path.abspath(template) + ": 16 trees (12 snapshots), ")
    assert "nodes checked" in lines[0] and "extents" in lines[0] and lines[0].endswith(" s")
    assert lines[-1] == "no problems found"
    # Not a terminal: no progress bar on either stream.
    assert "metadata trees" not in r.output


def test_damaged_disk_exits_1_with_one_line_per_problem(open_copy):
    d = open_copy
    # A block s2 maps and s1 does not: its leaf and its VBA are s2's own, so
    # the problem is reported under s2 (shared nodes are reported once, under
    # the oldest snapshot that holds them).
    older = set(lba_extents(d, "snap/s1"))
    (lba, vba, _n) = next(e for e in lba_extents(d, "snap/s2") if e not in older)
    key, _ = d._vba.tree.floor(vba)
    d._vba.tree.delete(key)
    d._commit()
    d.close()
    r = _run(d.path)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    problems = [ln for ln in lines[1:-1] if not ln.startswith("note:")]
    assert problems and all(ln.count(": ") >= 2 for ln in problems)
    assert any(ln.startswith(f"unmapped: snapshot 's2' LBA {lba}") for ln in problems), problems
    assert lines[-1].startswith(f"{len(problems)} problems found (") and "unmapped" in lines[-1]


def test_json_has_the_counts_and_every_problem(open_copy):
    d = open_copy
    (_lba, vba, _n) = lba_extents(d, "lba")[-1]
    d._csum.delete(vba)
    d._commit()
    d.close()
    r = _run("--json", "--data", d.path)
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    assert report["ok"] is False
    for key in ("disk", "trees", "snapshots", "nodes_checked", "nodes_shared", "extents", "blocks",
                "data_blocks", "seconds", "notes", "per_tree"):
        assert key in report
    assert report["trees"] == 16 and report["data_blocks"] > 0
    assert report["problems"] == [{"kind": "csum", "where": f"VBA {vba}",
                                   "what": "is mapped but has no checksum: reads of it fail"}]


def test_json_of_a_clean_disk(template):
    r = _run(template, "--json")
    assert r.exit_code == 0
    report = json.loads(r.output)
    assert report["ok"] is True and report["problems"] == [] and report["data_blocks"] == 0


def test_missing_disk_exits_3_as_from_every_command(scratch):
    r = _run(os.path.join(scratch, "nope"))
    assert r.exit_code == 3
    assert r.output.strip().startswith("vdisk: error: cannot verify ") and "no disk at" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_directory_that_is_not_a_disk_exits_2(scratch):
    r = _run(scratch)
    assert r.exit_code == 2
    assert "is not a vdisk disk" in r.output and len(r.output.strip().splitlines()) == 1


def test_disk_held_open_for_writing_is_verified(open_copy):
    """Another process holds the disk (and its lock); verify needs neither."""
    open_copy.write(4097, b"unflushed and flushed")
    open_copy.flush()
    out = subprocess.run([*_command(), "verify", "--data", open_copy.path], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _command():
    # LMDB must not open one environment twice in a process: run the CLI in another.
    vdisk = os.path.join(os.path.dirname(sys.executable), "vdisk")
    return [vdisk] if os.path.exists(vdisk) else [sys.executable, "-m", "vdisk.cli.main"]


def test_installed_command_runs(template):
    out = subprocess.run([*_command(), "verify", template], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "no problems found" and not out.stderr


def test_progress_bar_only_on_a_terminal(template):
    """On a pseudo-terminal the bar is drawn (on stderr); through a pipe it is not."""
    import pty
    import select
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([*_command(), "verify", "--data", template], stdout=slave, stderr=slave)
        os.close(slave)
        slave = None
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        assert p.wait(timeout=30) == 0, out
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    text = out.decode(errors="replace")
    assert "metadata trees" in text and "data blocks" in text and "no problems found" in text


# ---------------------------------------------------------------- the redo log

def _flushed_beside_the_maps(d, scratch: str) -> str:
    """Three flushes through the redo log and no commit after them; a crash copy
    (what SIGKILL leaves) to verify in this process."""
    for i in range(3):
        d.write(i * 7000, bytes([i + 1]) * 3000)
        d.flush()
    assert d._log_index == 3                    # one group each, none committed
    where = os.path.join(scratch, "crashed")
    shutil.copytree(d.path, where, ignore=shutil.ignore_patterns("lock"))
    return where


def test_flushes_the_maps_do_not_hold_yet_are_one_line_and_no_problem(open_copy, scratch):
    where = _flushed_beside_the_maps(open_copy, scratch)
    r = _run(where)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1] == ("redo log: 3 flushes (3 groups) not yet committed to the maps; they are replayed "
                        "when the disk is opened for writing")
    assert lines[-1] == "no problems found"
    report = json.loads(_run(where, "--json").output)
    assert (report["log_flushes"], report["log_groups"], report["log_dropped_groups"]) == (3, 3, 0)
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "CLI.md")) as f:
        documented = re.search(r"```json-fields verify-log\n(.*?)```", f.read(), re.S).group(1)
    assert {ln.split()[0] for ln in documented.splitlines() if ln.strip()} == {k for k in report if k.startswith("log_")}
    open_copy.checkpoint()                      # a full commit: the maps hold them all
    committed = os.path.join(scratch, "committed")
    shutil.copytree(open_copy.path, committed, ignore=shutil.ignore_patterns("lock"))
    r = _run(committed)
    assert r.exit_code == 0 and "redo log" not in r.output, r.output


def _append_group(d, where: str, payload: bytes, last: bool):
    """A valid next group of the writer's chain, written into the copy ``where``."""
    rec = lf.decode_log(d.forest.meta_get(b"disk/log"))
    bs = d.block_size
    group, _digest = lf.encode_group(bs, rec.log_id, d._log_index, d._log_next + 1, 7, d._log_prev,
                                     payload, last)
    with open(os.path.join(where, "data"), "r+b") as f:
        f.seek(d._log_next * bs)
        f.write(group)


def test_a_flush_cut_short_is_said_to_be_dropped_and_is_no_problem(open_copy, scratch):
    where = _flushed_beside_the_maps(open_copy, scratch)
    _append_group(open_copy, where, lf.zero(0, 1), last=False)
    r = _run(where)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[1].endswith(
        "replayed when the disk is opened for writing, and a last flush that did not complete "
        "(1 group) is dropped"), r.output


def test_a_log_record_outside_the_disk_is_a_problem(open_copy, scratch):
    where = _flushed_beside_the_maps(open_copy, scratch)
    _append_group(open_copy, where, lf.zero(open_copy.size // open_copy.block_size, 1), last=True)
    r = _run(where, "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.output)
    assert [(p["kind"], p["where"]) for p in report["problems"]] == [("log", "redo log")]
    assert "outside the disk" in report["problems"][0]["what"]
    assert report["log_flushes"] == 0           # not counted: replay would refuse the log
