"""Progress on a terminal (a pseudo-terminal here): one labelled bar per
state converted, one line for the verify pass, "writing the image" for an
export; nothing with --quiet. (Pipes get nothing: test_convert_chains.)"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from .util import build_chain, vdisk_cmd


def on_terminal(*args, timeout=60):
    """(exit code, what the terminal got, stdout) of vdisk with stderr on a pty."""
    master, slave = pty.openpty()
    p = subprocess.Popen(vdisk_cmd(*args), stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                         env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:         # EIO: the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            elif p.poll() is not None:
                break
        out = p.stdout.read()
        p.wait(timeout=30)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, seen.decode(errors="replace"), out.decode()


def test_progress_on_a_terminal(tmp_path):
    chain = build_chain(tmp_path, [{"name": "a.qcow2", "cmds": ["write -q -P 1 0 1M"]},
                                   {"name": "b.qcow2", "cmds": ["write -q -P 2 0 64K"]},
                                   {"name": "c.qcow2", "cmds": ["write -q -P 3 0 4K"]}])
    disk = tmp_path / "d.vdisk"
    code, tty, out = on_terminal("convert", chain.top, disk, "--verify")
    assert code == 0 and out.startswith("converted 3 layers"), (tty, out)
    for label in ("converting state 1/3", "converting state 3/3", "verifying states", "3/3 states"):
        assert label in tty, tty
    assert "1/1 states" not in tty and "Traceback" not in tty
    code, tty, out = on_terminal("export", disk, tmp_path / "x.raw", "--verify")
    assert code == 0 and "writing the image" in tty, tty
    code, tty, out = on_terminal("export", disk, tmp_path / "ch", "--chain")
    assert code == 0 and "writing layer 3/3" in tty, tty
    code, tty, out = on_terminal("import", chain.top, tmp_path / "q.vdisk", "--quiet")
    assert code == 0 and tty == "" and out.startswith("imported 1 layer")
