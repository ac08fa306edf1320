"""``vdisk verify``: exit codes, one line per problem, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from click.testing import CliRunner

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
    (lba, vba, _n) = lba_extents(d, "snap/s2")[10]
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
