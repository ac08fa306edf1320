"""Safe defaults of a mounted disk: what the mount creates beside the disk is
owner-only whatever the umask, and other users cannot reach the files
without --allow-other.

The other user is uid 65534 (nobody), so these tests need root. It reaches
the paths through a directory descriptor it inherits (``/proc/self/fd/N``),
so the test's root-only temporary directories do not stop it first.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"   # the other user may not be able to read the project's venv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

PROBE = r"""
import json, os, socket, sys
fd = int(sys.argv[1])
out = {"uid": os.geteuid()}
for name in sys.argv[2:]:
    path = f"/proc/self/fd/{fd}/{name}"
    try:
        if name.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        else:
            os.close(os.open(path, os.O_RDONLY))
        out[name] = 0
    except OSError as e:
        out[name] = e.errno
print(json.dumps(out))
"""


def _probe_as_nobody(directory: str, *names: str) -> dict:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            SYSTEM_PYTHON, "-c", PROBE, str(fd), *names],
                           pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out.pop("uid") == NOBODY
    return out


def test_mount_files_are_owner_only_under_umask_000(disk, mount):
    os.chmod(disk, 0o755)            # let others reach the directory: the files' own modes must refuse
    old = os.umask(0)
    try:
        m = mount(disk)
    finally:
        os.umask(old)
    for name in ("control.sock", "mount.log"):
        mode = stat.S_IMODE(os.lstat(os.path.join(disk, name)).st_mode)
        assert mode & 0o077 == 0, (name, oct(mode))
    with open(os.path.join(disk, "public"), "w") as f:
        os.fchmod(f.fileno(), 0o644)     # the control: the probe does reach the directory
    assert _probe_as_nobody(disk, "public", "control.sock", "mount.log") == {
        "public": 0, "control.sock": 13, "mount.log": 13}
    # Without --allow-other the kernel keeps every other user out of the mount.
    assert _probe_as_nobody(m.mp, "disk.img") == {"disk.img": 13}
