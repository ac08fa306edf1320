"""docs/GUIDE.md runs: every command in its ``sh`` blocks, in order, in an
empty directory, with ``vdisk`` on PATH. A line ``vdisk serve ... &`` runs
in the background until its banner says it serves, and ``kill %N`` stops
the N-th such job, as the guide says a shell would. Also: every command
and its --help have a one-line summary and an example, and every command
appears in the guide."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import click
import pytest

from vdisk.cli.main import main

from .test_json import commands
from .util import ROOT, run, subcommands

GUIDE = os.path.join(ROOT, "docs", "GUIDE.md")
TOOLS = ("nbdkit", "nbdinfo", "qemu-img", "qemu-io", "fusermount3", "truncate", "cmp", "dd")


def guide_lines() -> list[str]:
    with open(GUIDE) as f:
        text = f.read()
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def _missing():
    out = [t for t in TOOLS if shutil.which(t) is None]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        out.append("/dev/fuse")
    return out


@pytest.mark.skipif(bool(_missing()), reason=f"needs {', '.join(_missing())} (./dev setup installs them)")
def test_every_command_of_the_guide_runs(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "TERM": "dumb"}
    jobs: list[subprocess.Popen] = []
    mounts = []
    try:
        for line in guide_lines():
            if line.endswith("&"):
                jobs.append(_background(line[:-1].strip(), tmp_path, env))
                continue
            m = re.fullmatch(r"kill %(\d+)", line)
            if m:
                _stop(jobs[int(m.group(1)) - 1])
                continue
            if line.startswith("vdisk mount "):
                mounts.append(str(tmp_path / line.split()[3]))
            r = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=180)
            assert r.returncode == 0, f"guide command failed ({r.returncode}): {line}\n{r.stdout}\n{r.stderr}"
            assert "Traceback" not in r.stderr, line
    finally:
        for p in jobs:
            if p.poll() is None:
                _stop(p)
        for mp in mounts:
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)


def _background(command: str, cwd, env) -> subprocess.Popen:
    assert command.startswith("vdisk serve "), f"the guide backgrounds only vdisk serve: {command}"
    p = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"{command} exited {p.wait()}: {p.stderr.read()}")
        if line.startswith("snapshots taken while serving"):
            return p
    raise AssertionError(f"{command} printed no banner in 60 s")


def _stop(p: subprocess.Popen):
    p.send_signal(signal.SIGTERM)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("a backgrounded vdisk serve did not stop on SIGTERM")
    assert p.returncode == 0, p.returncode


def test_every_command_appears_in_the_guide():
    lines = guide_lines()
    for path, _cmd in commands():
        want = re.compile(r"(^|[\s(\"])" + re.escape("vdisk " + " ".join(path)) + r"(\s|$)")
        assert any(want.search(line) for line in lines), f"vdisk {' '.join(path)} is not run in docs/GUIDE.md"


def _all(group=main, prefix=("vdisk",)):
    yield prefix, group
    for name, cmd in subcommands(group):
        if isinstance(cmd, click.Group):
            yield from _all(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


@pytest.mark.parametrize("path, cmd", list(_all()), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_help_has_a_one_line_summary_and_an_example(path, cmd):
    r = run(*path[1:], "--help")
    assert r.exit_code == 0, r.stderr
    summary = cmd.get_short_help_str(limit=1000)
    assert summary and not summary.endswith("...") and "\n" not in summary, summary
    assert re.search(r"^  Example: \S", r.stdout, re.M), f"{' '.join(path)} --help has no Example:"


@pytest.mark.parametrize("group", [[], ["snapshot"]], ids=["vdisk", "snapshot"])
def test_the_command_lists_do_not_cut_summaries(group):
    r = run(*group, "--help", env={"COLUMNS": "80"})
    listing = r.stdout.split("Commands:\n", 1)[1]
    assert "..." not in listing, listing


def test_docs_cli_lists_every_command():
    with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
        text = f.read()
    for path, _cmd in commands():
        assert f"`vdisk {' '.join(path)}" in text, f"vdisk {' '.join(path)} is missing from docs/CLI.md"
