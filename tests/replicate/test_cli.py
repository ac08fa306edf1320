"""vdisk diff, send and receive as a shell runs them: through pipes, killed
halfway and resumed, and their errors as one line with the right exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vdisk import Disk
from vdisk.replicate.staging import DIR as STAGING
from vdisk.replicate.staging import STATE

from .test_send_receive import boundaries, make_source, same_snapshot, stream_of
from .util import kill_after_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "TERM": "dumb"}


def sh(line: str, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def ok(line: str, cwd) -> str:
    r = sh(line, cwd)
    assert r.returncode == 0, (line, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stdout


def one_error(r, code: int, *words):
    lines = r.stderr.splitlines()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("vdisk: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def documented() -> dict[str, set[str]]:
    with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
        text = f.read()
    blocks = re.findall(r"```json-fields (\S+)\n(.*?)```", text, re.S)
    return {name: {line.split()[0] for line in body.splitlines() if line.strip()} for name, body in blocks}


@pytest.fixture
def src(scratch):
    make_source(os.path.join(scratch, "src"))
    return scratch


def test_round_trip_through_pipes_with_verify_clean(src):
    base = None
    for name in ("s1", "s2", "s3", "s4"):
        frm = f" --from {base}" if base else ""
        out = ok(f"vdisk send src {name}{frm} | vdisk receive dst", src)
        assert out.startswith(f"received snapshot {name} into dst (") and out.count("\n") == 1, out
        base = name
    for name in ("s1", "s2", "s3", "s4"):
        same_snapshot(os.path.join(src, "src"), os.path.join(src, "dst"), name)
    assert "no problems found" in ok("vdisk verify dst --data", src)
    # And through a file, with the summaries as JSON.
    doc = documented()
    sent = json.loads(ok("vdisk send src s4 -o full.stream --json", src))
    assert set(sent) == doc["send"] and sent["base"] is None
    got = json.loads(ok("vdisk receive other -i full.stream --json", src))
    assert set(got) == doc["receive"] and got["created_disk"] is True
    same_snapshot(os.path.join(src, "src"), os.path.join(src, "other"), "s4")


def test_diff_prints_ranges_and_json(src):
    text = ok("vdisk diff src s3 s4", src)
    assert text.splitlines()[0].split() == ["OFFSET", "LENGTH", "KIND"]
    rows = [line.split() for line in text.splitlines()[1:-1]]
    # s4 trimmed the first 2 MiB: what s3 held there (all but the hole s2 made) is now zero.
    assert rows[0][0] == "0" and all(k == "zero" and int(o) + int(n) <= 2 << 20 for o, n, k in rows)
    assert sum(int(n) for _, n, _ in rows) == (2 << 20) - (256 << 10)
    assert re.search(rf"^{len(rows)} ranges? differ from s3 to s4: 0 B of data, 1.75 MiB now zero",
                     text.splitlines()[-1])
    doc = documented()
    j = json.loads(ok("vdisk diff src - s1 --json", src))
    assert set(j) == doc["diff"] and set(j["changes"][0]) == doc["diff-change"]
    assert j["from"] == "-" and j["to"] == "s1" and all(c["data"] for c in j["changes"])
    j = json.loads(ok("vdisk diff src s4 --json", src))
    assert j["to"] is None and j["changes"] == []


@pytest.mark.parametrize("base", ["s1", None], ids=["incremental", "full-into-new-disk"])
def test_receive_killed_halfway_resumes_with_a_token(src, base):
    """A receive fed half its stream, then SIGKILLed once it checkpointed;
    the token names where it stood; send --resume continues it."""
    if base:
        ok("vdisk send src s1 | vdisk receive dst", src)
    buf = stream_of(os.path.join(src, "src"), "s2", base)
    p = subprocess.Popen([os.path.join(BIN, "vdisk"), "receive", "dst"], cwd=src, env=ENV,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = os.path.join(src, "dst", STAGING, STATE)
    kill_after_checkpoint(p, buf, boundaries(buf),
                          lambda: os.path.exists(state) and json.load(open(state))["offset"] > 0)
    with Disk.open(os.path.join(src, "dst"), readonly=True) as d:
        assert [r.name for r in d.snapshot_records()] == (["s1"] if base else [])
    frm = " --from s1" if base else ""
    one_error(sh(f"vdisk send src s2{frm} | vdisk receive dst", src), 5, "--resume")
    token = ok("vdisk receive dst --resume-token", src).strip()
    out = ok(f"vdisk send src s2{frm} --resume {token} | vdisk receive dst --resume", src)
    assert "resumed at byte" in out
    same_snapshot(os.path.join(src, "src"), os.path.join(src, "dst"), "s2")
    assert "no problems found" in ok("vdisk verify dst --data", src)


def test_errors_are_one_line_with_their_exit_code(src):
    ok("vdisk send src s1 -o s1.stream", src)
    data = bytearray(open(os.path.join(src, "s1.stream"), "rb").read())
    data[500] ^= 4
    open(os.path.join(src, "bad.stream"), "wb").write(data)
    one_error(sh("vdisk receive dst -i bad.stream", src), 8, "damaged", "blake3")
    assert not os.path.exists(os.path.join(src, "dst"))
    open(os.path.join(src, "short.stream"), "wb").write(data[:300])
    one_error(sh("vdisk receive dst -i short.stream", src), 8, "ended", "--resume")
    one_error(sh("vdisk receive dst -i s1.stream", src), 5, "in the middle of receiving")
    assert "dropped the receive" in ok("vdisk receive dst --abort", src)
    ok("vdisk receive dst -i s1.stream", src)
    one_error(sh("vdisk send src s3 --from s2 | vdisk receive dst", src), 3, "no snapshot 's2'")
    one_error(sh("vdisk send src s1 --json", src), 2, "-o FILE")
    one_error(sh("vdisk send src nope -o x.stream", src), 3, "nope")
    assert not os.path.exists(os.path.join(src, "x.stream"))
    one_error(sh("vdisk diff src s1 nope", src), 3, "nope")
    one_error(sh("vdisk receive dst --resume-token", src), 3, "no receive in progress")
    doc = documented()
    one_error(sh("vdisk send src s2 --from s1 | head -c 5000 | vdisk receive dst", src), 8, "ended")
    token = json.loads(ok("vdisk receive dst --resume-token --json", src))
    assert set(token) == doc["receive-token"] and token["phase"] == "receiving"
    dropped = json.loads(ok("vdisk receive dst --abort --json", src))
    assert set(dropped) == doc["receive-abort"] and dropped["removed_disk"] is False
    one_error(sh("vdisk receive dst --abort --resume", src), 2, "cannot be used together")
    one_error(sh("vdisk receive dst < /dev/null", src), 8, "ended")


def on_terminal(args, cwd):
    """Run a vdisk command to its end with stderr on a pty (stdout a pipe): (exit code, what the terminal got).

    What these commands draw is far less than the pty buffers, so the child never waits on the reader.
    """
    import pty
    master, slave = pty.openpty()
    try:
        r = subprocess.run([os.path.join(BIN, "vdisk"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                           stdin=subprocess.DEVNULL, env={**ENV, "TERM": "xterm", "COLUMNS": "100"}, timeout=60)
    finally:
        os.close(slave)
    seen = b""
    try:
        while chunk := os.read(master, 65536):
            seen += chunk
    except OSError:             # EIO: everything written has been read
        pass
    finally:
        os.close(master)
    return r.returncode, seen.decode(errors="replace")


def test_progress_bars_on_a_terminal_and_nothing_stray_in_a_pipe(src):
    code, tty = on_terminal(["send", "src", "s2", "--from", "s1", "-o", "s2.stream"], src)
    assert code == 0
    assert "sending changed blocks" in tty and "100%" in tty and "\r" in tty and "\x1b[K" in tty, repr(tty)
    code, tty = on_terminal(["receive", "dst", "-i", os.path.join(src, "s2.stream")], src)
    # Refused (dst has no base): the one error line, and no bar begun before the refusal.
    assert code == 3 and "receiving" not in tty and tty.count("vdisk: error:") == 1, repr(tty)
    ok("vdisk send src s1 | vdisk receive dst", src)
    code, tty = on_terminal(["receive", "dst", "-i", os.path.join(src, "s2.stream")], src)
    assert code == 0 and "receiving" in tty and "applying to the disk" in tty and "100%" in tty, repr(tty)
    code, tty = on_terminal(["send", "src", "s3", "--from", "s2", "-o", "s3.stream", "--quiet"], src)
    assert code == 0 and tty == "", repr(tty)
    # Through a pipe (stderr not a terminal): the summary line alone.
    r = sh("vdisk send src s3 --from s2 | vdisk receive dst", src)
    assert r.returncode == 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("sent snapshot s3"), r.stderr
