"""Safe defaults of a served disk: owner-only sockets whatever the umask, and a
control socket that refuses peers of another uid.

Other users are played by uid 65534 (nobody), so these tests need root. The
children reach the sockets through a directory descriptor they inherit
(``/proc/self/fd/N/NAME``), so the test's temporary directories, which are
root's alone, do not stop them first: what refuses them is the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess

import pytest

from nbd_util import run_vdisk

from vdisk import Disk
from vdisk.control.server import ControlServer

NOBODY = 65534
# The other user may not be able to read the project's venv; the client needs only the stdlib.
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

# Runs as the other user: connect to socket NAME in the directory open as fd
# N, send one control request, print what happened as one JSON line.
CLIENT = r"""
import ctypes, json, os, socket, sys
fd, name, fsuid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if fsuid == "root":
    # Only the credentials the server sees are nobody's (SO_PEERCRED reports
    # the effective uid); the file system still lets us reach the socket.
    os.seteuid(65534)
    ctypes.CDLL(None, use_errno=True).setfsuid(0)
# The control: this process does reach the directory, so a refusal below is the socket's.
os.listdir(f"/proc/self/fd/{fd}")
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect(f"/proc/self/fd/{fd}/{name}")
except OSError as e:
    print(json.dumps({"connect": e.errno, "uid": os.geteuid()}))
    sys.exit()
try:
    s.sendall(b'{"v": 1, "id": 1, "op": "snapshot_create", "args": {"name": "intruder"}}\n')
except (BrokenPipeError, ConnectionResetError):
    pass   # a refusing server may answer and hang up before reading: the answer is still there
print(json.dumps({"connect": 0, "uid": os.geteuid(), "reply": s.makefile("rb").readline().decode()}))
"""


def _as_nobody(directory: str, name: str, fsuid_root: bool = False) -> dict:
    """CLIENT run as uid 65534 against DIRECTORY/NAME."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        if fsuid_root:
            argv = [SYSTEM_PYTHON, "-c", CLIENT, str(fd), name, "root"]
        else:
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                    SYSTEM_PYTHON, "-c", CLIENT, str(fd), name, "nobody"]
        r = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["uid"] == NOBODY
    return out


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _owner_only(path: str) -> bool:
    return stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0


def test_served_sockets_are_owner_only_under_umask_000(disk, serve):
    os.chmod(disk, 0o755)   # let others reach the sockets: their own modes must refuse
    with _umask(0):
        s = serve(disk)
    control = os.path.join(disk, "control.sock")
    assert _owner_only(s.socket), oct(os.lstat(s.socket).st_mode)
    assert _owner_only(control), oct(os.lstat(control).st_mode)
    for name in ("nbd.sock", "control.sock"):
        out = _as_nobody(disk, name)
        assert out["connect"] == 13, out    # EACCES: the socket's mode refuses
    assert "intruder" not in run_vdisk("snapshot", "list", disk).stdout


def test_control_socket_refuses_a_peer_of_another_uid(tmp_path):
    path = str(tmp_path / "c.vdisk")
    d = Disk.create(path, 1 << 20)
    with _umask(0):
        server = ControlServer(d, "test")
        server.start()
    try:
        assert _owner_only(server.path)
        # Past the socket's mode (its path reachable as root's file system
        # identity), the server still sees uid 65534 and refuses.
        out = _as_nobody(path, "control.sock", fsuid_root=True)
        assert out["connect"] == 0
        reply = json.loads(out["reply"])
        assert reply["ok"] is False and reply["error"]["class"] == "Busy"
        assert f"not to uid {NOBODY}" in reply["error"]["message"]
        assert [x.name for x in d.snapshots()] == []
    finally:
        server.close()
        d.close()
