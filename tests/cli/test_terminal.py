"""What a person at a terminal sees, through a pseudo-terminal: progress
bars on stderr when it is a terminal (whatever stdout is), and nothing
stray - no label, no escape - when it is a pipe, TERM=dumb or --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest

from vdisk import Disk

from .util import run, vdisk_cmd

BS = 4096


def on_terminal(*args, env=None, answer: bytes | None = None, stdin_tty=False, timeout=120):
    """Run vdisk with stderr (and stdin if asked) on a pty; stdout is a pipe.

    Returns (exit code, what the terminal got, stdout).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    p = subprocess.Popen(vdisk_cmd(*args), stdout=subprocess.PIPE, stderr=slave,
                         stdin=slave if stdin_tty else subprocess.DEVNULL,
                         env={**os.environ, "TERM": "xterm", **(env or {})})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:           # EIO: the last holder of the pty's other end is gone
                    break
                if not chunk:
                    break
                seen += chunk
                if answer is not None and b"[y/N]" in seen:
                    os.write(master, answer)
                    answer = None
            elif p.poll() is not None:
                break
        out = p.stdout.read()
        p.wait(timeout=30)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return p.returncode, seen.decode(errors="replace"), out.decode()


@pytest.fixture
def busy_disk(disk):
    """A disk with a snapshot holding blocks alone and scattered free blocks."""
    with Disk.open(disk) as d:
        d.write(0, b"a" * 256 * BS)
        d.create_snapshot("old")
        d.write(0, b"b" * 256 * BS)          # "old" now holds 256 blocks alone
        d.flush()
        for lba in range(0, 256, 2):          # single freed blocks stay in the file
            d.write(lba * BS, b"c" * BS)
        d.flush()
    return disk


def _assert_bar(tty: str, label: str):
    assert label in tty and "100%" in tty and "\r" in tty and "\x1b[K" in tty, repr(tty)
    assert tty.endswith("\n")


def test_compact_and_delete_draw_bars_on_a_terminal_with_stdout_piped(busy_disk):
    code, tty, out = on_terminal("compact", busy_disk)
    assert code == 0, tty
    _assert_bar(tty, "punching free space")
    assert out.startswith("returned ") and "\x1b" not in out and "\r" not in out
    code, tty, out = on_terminal("snapshot", "delete", busy_disk, "old")
    assert code == 0, tty
    _assert_bar(tty, "finding blocks only it holds")
    _assert_bar(tty, "freeing blocks")
    assert " in 0:0" in tty
    assert out == "deleted snapshot old, freed 1 MiB (1048576 bytes)\n"


@pytest.mark.parametrize("args", [["compact", "D"], ["snapshot", "delete", "D", "old"]], ids=["compact", "delete"])
def test_nothing_stray_when_stderr_is_a_pipe(busy_disk, args):
    r = subprocess.run(vdisk_cmd(*[busy_disk if a == "D" else a for a in args]), capture_output=True, text=True,
                       env={**os.environ, "TERM": "xterm"}, timeout=120)
    assert r.returncode == 0 and r.stderr == "", repr(r.stderr)
    assert "\x1b" not in r.stdout and "\r" not in r.stdout


@pytest.mark.parametrize("how", [{"env": {"TERM": "dumb"}}, {"flag": "--quiet"}, {"flag": "-q"}],
                         ids=["TERM=dumb", "--quiet", "-q"])
def test_no_bar_with_term_dumb_or_quiet_even_on_a_terminal(busy_disk, how):
    for args in (["compact", busy_disk], ["snapshot", "delete", busy_disk, "old"]):
        code, tty, out = on_terminal(*args, *([how["flag"]] if "flag" in how else []), env=how.get("env"))
        assert code == 0 and tty == "", repr(tty)


def test_verify_data_draws_bars_when_only_stderr_is_a_terminal(busy_disk):
    # `vdisk verify --data D > report.txt` still shows progress.
    code, tty, out = on_terminal("verify", "--data", busy_disk)
    assert code == 0, tty
    _assert_bar(tty, "metadata trees")
    _assert_bar(tty, "data blocks")
    assert out.endswith("no problems found\n") and "\x1b" not in out


@pytest.mark.parametrize("how", [{"env": {"TERM": "dumb"}}, {"flag": "--quiet"}], ids=["TERM=dumb", "--quiet"])
def test_verify_draws_nothing_with_term_dumb_or_quiet(busy_disk, how):
    code, tty, out = on_terminal("verify", "--data", busy_disk, *([how["flag"]] if "flag" in how else []),
                                 env=how.get("env"))
    assert code == 0 and tty == "", repr(tty)


def test_verify_draws_nothing_into_a_pipe(busy_disk):
    r = subprocess.run(vdisk_cmd("verify", "--data", busy_disk), capture_output=True, text=True,
                       env={**os.environ, "TERM": "xterm"}, timeout=120)
    assert r.returncode == 0 and r.stderr == "", repr(r.stderr)


def test_a_big_grow_asks_on_a_terminal(disk):
    code, tty, out = on_terminal("resize", disk, "1024P", stdin_tty=True, answer=b"n\n")
    assert code == 2 and "cannot be shrunk back [y/N]" in tty and "not resized" in tty
    assert "\r\n" in tty and tty.count("vdisk: error:") == 1
    code, tty, out = on_terminal("resize", disk, "1024P", stdin_tty=True, answer=b"y\n")
    assert code == 0, tty
    assert "to 1 EiB (1152921504606846976 bytes)" in out
    assert '"size": 1152921504606846976' in run("info", disk, "--json").stdout
